// Semantic checks of decoded metadata, shared by the writer (to refuse bad
// input from agents early) and the reader (to refuse bad images). Pure
// functions; any thread. Messages say what is wrong; callers add where.
#ifndef VGPU_STATE_CODECS_INTERNAL_RULES_H_
#define VGPU_STATE_CODECS_INTERNAL_RULES_H_

#include "absl/status/status.h"
#include "state-codecs/image.h"

namespace vgpu::codec::internal {

// Checks fields the reader relies on: magic, version, ids, device indices,
// encoder parameters.
absl::Status CheckManifest(schema::Manifest::Reader m, const Limits& limits);

// Checks a section header against the manifest. Returns UNIMPLEMENTED for a
// kind this code does not know (the caller decides by `critical`).
absl::Status CheckSectionHeader(schema::SectionHeader::Reader h,
                                schema::Manifest::Reader m,
                                const Limits& limits);

bool IsKnownSectionKind(schema::SectionHeader::Reader h);

}  // namespace vgpu::codec::internal

#endif  // VGPU_STATE_CODECS_INTERNAL_RULES_H_
