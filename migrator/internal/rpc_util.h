// Conversions at the Cap'n Proto boundary: absl::Status <-> the Error
// struct the migrator's schemas carry as a value, a KJ exception (a broken
// connection, a peer that vanished) -> absl::Status, and compatibility
// reports <-> their wire form. Header-only helpers; any thread.
#ifndef VGPU_MIGRATOR_INTERNAL_RPC_UTIL_H_
#define VGPU_MIGRATOR_INTERNAL_RPC_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kj/exception.h"
#include "migrator/compat.h"
#include "migrator/schema/common.capnp.h"

namespace vgpu::migrator::internal {

inline void SetError(const absl::Status& s, schema::Error::Builder out) {
  out.setCode(static_cast<uint32_t>(s.code()));
  out.setMessage(std::string(s.message()));
}

inline absl::Status GetError(schema::Error::Reader e) {
  if (e.getCode() == 0) return absl::OkStatus();
  uint32_t code = e.getCode();
  if (code > static_cast<uint32_t>(absl::StatusCode::kUnauthenticated)) {
    code = static_cast<uint32_t>(absl::StatusCode::kUnknown);
  }
  return absl::Status(static_cast<absl::StatusCode>(code),
                      e.getMessage().cStr());
}

// A KJ exception from an RPC means the transport failed (disconnected, the
// peer died, TLS refused): UNAVAILABLE with KJ's description, prefixed by
// what we were doing.
inline absl::Status FromKjException(const kj::Exception& e,
                                    const std::string& doing) {
  std::string what = e.getDescription().cStr();
  // KJ prefixes remote exceptions with "remote exception: "; keep the cause.
  return absl::UnavailableError(absl::StrCat(doing, ": ", what));
}

inline void SetReport(const CompatReport& r, schema::CompatReport::Builder out) {
  out.setDestination(r.destination);
  auto rows = out.initRows(r.rows.size());
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const CompatRow& row = r.rows[i];
    auto w = rows[i];
    w.setDevice(row.device);
    w.setInstance(row.instance);
    w.setStrategy(row.strategy);
    w.setRule(row.rule);
    w.setOk(row.ok);
    w.setDetail(row.detail);
  }
  auto notes = out.initNotes(r.notes.size());
  for (size_t i = 0; i < r.notes.size(); ++i) notes.set(i, r.notes[i]);
}

inline CompatReport GetReport(schema::CompatReport::Reader in) {
  CompatReport r;
  r.destination = in.getDestination();
  for (auto row : in.getRows()) {
    r.rows.push_back(CompatRow{row.getDevice(), row.getInstance(),
                               row.getStrategy(), row.getRule(), row.getOk(),
                               row.getDetail()});
  }
  for (auto n : in.getNotes()) r.notes.emplace_back(n.cStr());
  return r;
}

}  // namespace vgpu::migrator::internal

#endif  // VGPU_MIGRATOR_INTERNAL_RPC_UTIL_H_
