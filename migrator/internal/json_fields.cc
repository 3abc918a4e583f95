#include "migrator/internal/json_fields.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vgpu::migrator::internal {

using json = nlohmann::json;

std::string JoinPath(const std::string& path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

std::string IndexPath(const std::string& path, size_t i) {
  return absl::StrCat(path, "[", i, "]");
}

absl::Status FieldError(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(
      path.empty() ? std::string(what) : absl::StrCat(path, ": ", what));
}

FieldReader::FieldReader(const json& j, std::string path, absl::Status* status)
    : j_(j), path_(std::move(path)), status_(status) {
  if (!j_.is_object()) Fail(path_, "expected an object");
}

const json* FieldReader::Take(absl::string_view key) {
  if (!status_->ok()) return nullptr;
  taken_.insert(std::string(key));
  auto it = j_.find(std::string(key));
  return it == j_.end() ? nullptr : &*it;
}

std::string FieldReader::Path(absl::string_view key) const {
  return JoinPath(path_, key);
}

bool FieldReader::Fail(const std::string& path, absl::string_view what) {
  if (status_->ok()) *status_ = FieldError(path, what);
  return false;
}

bool FieldReader::String(absl::string_view key, std::string* out) {
  const json* v = Take(key);
  if (v == nullptr) return false;
  if (!v->is_string()) return Fail(Path(key), "expected a string");
  *out = v->get<std::string>();
  return true;
}

bool FieldReader::Bool(absl::string_view key, bool* out) {
  const json* v = Take(key);
  if (v == nullptr) return false;
  if (!v->is_boolean()) return Fail(Path(key), "expected true or false");
  *out = v->get<bool>();
  return true;
}

bool FieldReader::Uint32(absl::string_view key, uint32_t* out) {
  const json* v = Take(key);
  if (v == nullptr) return false;
  if (!v->is_number_unsigned() || v->get<uint64_t>() > UINT32_MAX) {
    return Fail(Path(key), "expected a non-negative integer");
  }
  *out = static_cast<uint32_t>(v->get<uint64_t>());
  return true;
}

bool FieldReader::Uint64(absl::string_view key, uint64_t* out) {
  const json* v = Take(key);
  if (v == nullptr) return false;
  if (!v->is_number_unsigned()) {
    return Fail(Path(key), "expected a non-negative integer");
  }
  *out = v->get<uint64_t>();
  return true;
}

bool FieldReader::Int(absl::string_view key, int* out) {
  const json* v = Take(key);
  if (v == nullptr) return false;
  if (!v->is_number_integer() || v->get<int64_t>() < INT32_MIN ||
      v->get<int64_t>() > INT32_MAX) {
    return Fail(Path(key), "expected an integer");
  }
  *out = static_cast<int>(v->get<int64_t>());
  return true;
}

bool FieldReader::Int(absl::string_view key, int min, int max, int* out) {
  const json* v = Take(key);
  if (v == nullptr) return false;
  if (!v->is_number_integer() || v->get<int64_t>() < min ||
      v->get<int64_t>() > max) {
    return Fail(Path(key),
                absl::StrFormat("expected an integer in %d..%d", min, max));
  }
  *out = static_cast<int>(v->get<int64_t>());
  return true;
}

bool FieldReader::StringList(absl::string_view key,
                             std::vector<std::string>* out) {
  const json* v = Take(key);
  if (v == nullptr) return false;
  if (!v->is_array()) return Fail(Path(key), "expected a list of strings");
  std::vector<std::string> items;
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string()) {
      return Fail(IndexPath(Path(key), i), "expected a string");
    }
    items.push_back((*v)[i].get<std::string>());
  }
  *out = std::move(items);
  return true;
}

void FieldReader::Finish() {
  if (!status_->ok()) return;
  for (auto it = j_.begin(); it != j_.end(); ++it) {
    if (taken_.count(it.key()) == 0) {
      Fail(Path(it.key()), "unknown key");
      return;
    }
  }
}

}  // namespace vgpu::migrator::internal
