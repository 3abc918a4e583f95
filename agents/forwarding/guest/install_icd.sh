#!/bin/sh
# install_icd.sh DIR [LIBRARY]: writes DIR/vgpu.icd naming the guest
# library by its absolute path, so that OCL_ICD_VENDORS=DIR (or
# OCL_ICD_VENDORS=DIR/vgpu.icd) makes the ocl-icd loader find it.
# LIBRARY defaults to libvgpu-opencl.so next to this script (bazel-bin).
set -eu
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 DIR [LIBRARY]" >&2
  exit 2
fi
dir=$1
lib=${2:-$(dirname "$0")/libvgpu-opencl.so}
if [ ! -f "$lib" ]; then
  echo "$0: no library at $lib" >&2
  exit 1
fi
lib=$(readlink -f "$lib")
mkdir -p "$dir"
printf '%s\n' "$lib" > "$dir/vgpu.icd"
echo "$dir/vgpu.icd -> $lib"
