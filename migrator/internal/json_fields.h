// FieldReader: reads one JSON object for the migrator's strict parsers (the
// vgpud config file, host profiles, compatibility reports). Each getter
// consumes a key and checks its type; Finish() refuses the keys nobody asked
// for; the first error wins and names the key's path ("vms[0].name: ...").
// Thread-compatible: readers that share one status belong to one thread.
#ifndef VGPU_MIGRATOR_INTERNAL_JSON_FIELDS_H_
#define VGPU_MIGRATOR_INTERNAL_JSON_FIELDS_H_

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace vgpu::migrator::internal {

// "path.key", or "key" at the top level (empty `path`).
std::string JoinPath(const std::string& path, absl::string_view key);

// "path[i]".
std::string IndexPath(const std::string& path, size_t i);

// INVALID_ARGUMENT "path: what", or just "what" when `path` is empty.
absl::Status FieldError(const std::string& path, absl::string_view what);

class FieldReader {
 public:
  // `j` must outlive the reader. All readers of one parse share `status`;
  // once it holds an error, every getter does nothing.
  FieldReader(const nlohmann::json& j, std::string path, absl::Status* status);

  FieldReader(const FieldReader&) = delete;
  FieldReader& operator=(const FieldReader&) = delete;

  // The value under `key`, or nullptr when it is absent or an error has
  // already happened. Either way `key` counts as known to Finish().
  const nlohmann::json* Take(absl::string_view key);

  // The path of `key` inside this object.
  std::string Path(absl::string_view key) const;

  // Records the error (unless an earlier one stands) and returns false, so
  // that callers can `return Fail(...)`.
  bool Fail(const std::string& path, absl::string_view what);

  // Each returns true when the key was present and valid, and only then
  // writes `*out`.
  bool String(absl::string_view key, std::string* out);
  bool Bool(absl::string_view key, bool* out);
  bool Uint32(absl::string_view key, uint32_t* out);
  bool Uint64(absl::string_view key, uint64_t* out);
  // Any 32-bit integer.
  bool Int(absl::string_view key, int* out);
  // An integer within min..max, which the error message names.
  bool Int(absl::string_view key, int min, int max, int* out);
  bool StringList(absl::string_view key, std::vector<std::string>* out);

  // Calls `each(element, path)` for every element of the list at `key`,
  // stopping at the first error.
  template <typename Fn>
  void List(absl::string_view key, Fn each) {
    const nlohmann::json* v = Take(key);
    if (v == nullptr) return;
    if (!v->is_array()) {
      Fail(Path(key), "expected a list");
      return;
    }
    for (size_t i = 0; i < v->size() && status_->ok(); ++i) {
      each((*v)[i], IndexPath(Path(key), i));
    }
  }

  // Fails on the first key that no getter or Take() asked for.
  void Finish();

 private:
  const nlohmann::json& j_;
  const std::string path_;
  absl::Status* const status_;
  std::set<std::string> taken_;
};

}  // namespace vgpu::migrator::internal

#endif  // VGPU_MIGRATOR_INTERNAL_JSON_FIELDS_H_
