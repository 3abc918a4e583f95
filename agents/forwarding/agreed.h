// What both ends of the forwarding protocol must compute alike: which info
// values carry object handles (sent as ids), the bytes per pixel of an
// image format, and how many bytes a host pointer spans for an image read
// or write (the payload's size).
#ifndef VGPU_AGENTS_FORWARDING_AGREED_H_
#define VGPU_AGENTS_FORWARDING_AGREED_H_

#include <CL/cl.h>

#include <cstddef>
#include <cstdint>

#include "agents/forwarding/protocol.capnp.h"

namespace vgpu::forwarding {

// Whether info `param` of `kind` is one or more object handles (8 bytes
// each), which travel as ids.
bool IsHandleParam(proto::InfoKind kind, cl_uint param);

// Bytes per pixel of an image format; 0 when the format is not one the
// specification lists (the real call then decides).
size_t PixelBytes(cl_uint order, cl_uint type);

// The bytes a host pointer spans for an image region with these pitches
// (0: packed), as the native call touches them.
uint64_t ImageHostExtent(cl_mem_object_type type, size_t elem,
                         const size_t region[3], size_t row_pitch,
                         size_t slice_pitch);

}  // namespace vgpu::forwarding

#endif  // VGPU_AGENTS_FORWARDING_AGREED_H_
