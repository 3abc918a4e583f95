// ExtentMap: which chunk holds each byte range of a section's logical space,
// with later writes overlaying earlier ones (an incremental image over its
// parent, a pre-copy round over the previous one). Single-threaded.
#ifndef VGPU_STORE_INTERNAL_EXTENT_MAP_H_
#define VGPU_STORE_INTERNAL_EXTENT_MAP_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vgpu::store::internal {

struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  std::string chunk;  // 32-byte SHA-256; empty for a zero run
  uint32_t chunk_offset = 0;

  bool zero() const { return chunk.empty(); }
};

class ExtentMap {
 public:
  // Makes [e.offset, e.offset + e.length) refer to `e`, trimming whatever
  // was there. Adjacent pieces of the same chunk are merged.
  void Overlay(const Extent& e) {
    if (e.length == 0) return;
    const uint64_t end = e.offset + e.length;
    // Trim the extent that starts before e.offset and reaches into it.
    auto it = map_.lower_bound(e.offset);
    if (it != map_.begin()) {
      auto prev = std::prev(it);
      Extent& p = prev->second;
      uint64_t p_end = p.offset + p.length;
      if (p_end > e.offset) {
        if (p_end > end) {  // e sits inside p: keep p's tail too
          Extent tail = p;
          tail.offset = end;
          tail.length = p_end - end;
          if (!tail.zero()) tail.chunk_offset += end - p.offset;
          map_[end] = tail;
        }
        p.length = e.offset - p.offset;
      }
    }
    // Remove or trim extents starting inside [e.offset, end).
    it = map_.lower_bound(e.offset);
    while (it != map_.end() && it->first < end) {
      Extent x = it->second;
      it = map_.erase(it);
      uint64_t x_end = x.offset + x.length;
      if (x_end > end) {
        if (!x.zero()) x.chunk_offset += end - x.offset;
        x.length = x_end - end;
        x.offset = end;
        map_[end] = x;
        break;
      }
    }
    // Merge with a predecessor that continues the same chunk (or zero run).
    Extent merged = e;
    it = map_.lower_bound(e.offset);
    if (it != map_.begin()) {
      auto prev = std::prev(it);
      Extent& p = prev->second;
      if (p.offset + p.length == e.offset && p.chunk == e.chunk &&
          (e.zero() || p.chunk_offset + p.length == e.chunk_offset)) {
        p.length += e.length;
        return;
      }
    }
    map_[e.offset] = merged;
  }

  void Clear() { map_.clear(); }
  bool empty() const { return map_.empty(); }

  std::vector<Extent> extents() const {
    std::vector<Extent> out;
    out.reserve(map_.size());
    for (const auto& [offset, e] : map_) out.push_back(e);
    return out;
  }

 private:
  std::map<uint64_t, Extent> map_;  // by offset; non-overlapping
};

}  // namespace vgpu::store::internal

#endif  // VGPU_STORE_INTERNAL_EXTENT_MAP_H_
