#include "agents/forwarding/agreed.h"

namespace vgpu::forwarding {

bool IsHandleParam(proto::InfoKind k, cl_uint p) {
  using proto::InfoKind;
  switch (k) {
    case InfoKind::DEVICE:
      return p == CL_DEVICE_PLATFORM || p == CL_DEVICE_PARENT_DEVICE;
    case InfoKind::CONTEXT: return p == CL_CONTEXT_DEVICES;
    case InfoKind::QUEUE:
      return p == CL_QUEUE_CONTEXT || p == CL_QUEUE_DEVICE ||
             p == CL_QUEUE_DEVICE_DEFAULT;
    case InfoKind::MEM:
      return p == CL_MEM_CONTEXT || p == CL_MEM_ASSOCIATED_MEMOBJECT;
    case InfoKind::IMAGE: return p == CL_IMAGE_BUFFER;
    case InfoKind::SAMPLER: return p == CL_SAMPLER_CONTEXT;
    case InfoKind::PROGRAM:
      return p == CL_PROGRAM_CONTEXT || p == CL_PROGRAM_DEVICES;
    case InfoKind::KERNEL:
      return p == CL_KERNEL_CONTEXT || p == CL_KERNEL_PROGRAM;
    case InfoKind::EVENT:
      return p == CL_EVENT_COMMAND_QUEUE || p == CL_EVENT_CONTEXT;
    default:
      return false;
  }
}

// Bytes per pixel of an image format; 0 when the format is not one the
// specification lists (the real call then decides).
size_t PixelBytes(cl_uint order, cl_uint type) {
  size_t channels = 0;
  switch (order) {
    case CL_R: case CL_A: case CL_INTENSITY: case CL_LUMINANCE:
    case CL_DEPTH: case CL_Rx:
      channels = 1; break;
    case CL_RG: case CL_RA: case CL_RGx:
      channels = 2; break;
    case CL_RGB: case CL_sRGB: case CL_RGBx: case CL_sRGBx:
      channels = 3; break;
    case CL_RGBA: case CL_BGRA: case CL_ARGB: case CL_ABGR: case CL_sRGBA:
    case CL_sBGRA:
      channels = 4; break;
    default:
      return 0;
  }
  switch (type) {
    case CL_SNORM_INT8: case CL_UNORM_INT8: case CL_SIGNED_INT8:
    case CL_UNSIGNED_INT8:
      return channels;
    case CL_SNORM_INT16: case CL_UNORM_INT16: case CL_SIGNED_INT16:
    case CL_UNSIGNED_INT16: case CL_HALF_FLOAT:
      return channels * 2;
    case CL_SIGNED_INT32: case CL_UNSIGNED_INT32: case CL_FLOAT:
      return channels * 4;
    case CL_UNORM_SHORT_565: case CL_UNORM_SHORT_555:
      return 2;
    case CL_UNORM_INT_101010: case CL_UNORM_INT24:
      return 4;
    default:
      return 0;
  }
}

// The bytes a host pointer spans for an image read or write of `region`
// with the given pitches (0: packed), as the native call touches them.
uint64_t ImageHostExtent(cl_mem_object_type type, size_t elem,
                         const size_t region[3], size_t row_pitch,
                         size_t slice_pitch) {
  const size_t row = row_pitch ? row_pitch : elem * region[0];
  size_t rows = region[1], layers = region[2];
  size_t slice = slice_pitch;
  if (type == CL_MEM_OBJECT_IMAGE1D_ARRAY) {
    layers = region[1];
    rows = 1;
    if (!slice) slice = row;
  } else if (!slice) {
    slice = row * rows;
  }
  if (region[0] == 0 || rows == 0 || layers == 0) return 0;
  return (layers - 1) * slice + (rows - 1) * row + elem * region[0];
}

}  // namespace vgpu::forwarding
