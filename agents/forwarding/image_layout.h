// Image arithmetic both ends of the forwarding protocol must agree on: the
// bytes per pixel of an image format, and how many bytes a host pointer
// spans for an image read or write (the payload's size).
#ifndef VGPU_AGENTS_FORWARDING_IMAGE_LAYOUT_H_
#define VGPU_AGENTS_FORWARDING_IMAGE_LAYOUT_H_

#include <CL/cl.h>

#include <cstddef>
#include <cstdint>

namespace vgpu::forwarding {

// Bytes per pixel of an image format; 0 when the format is not one the
// specification lists (the real call then decides).
size_t PixelBytes(cl_uint order, cl_uint type);

// The bytes a host pointer spans for an image region with these pitches
// (0: packed), as the native call touches them.
uint64_t ImageHostExtent(cl_mem_object_type type, size_t elem,
                         const size_t region[3], size_t row_pitch,
                         size_t slice_pitch);

}  // namespace vgpu::forwarding

#endif  // VGPU_AGENTS_FORWARDING_IMAGE_LAYOUT_H_
