#!/usr/bin/env bash
# Builds and runs the OpenCL API-forwarding benchmark
# (//agents/forwarding/bench:forwarding_bench) and prints, native PoCL
# against forwarded through libvgpu-opencl.so and a vgpu-cl-backend that the
# benchmark starts itself, with a baseline measured in the same process for
# each figure:
#   1. round trip of a trivial call (clGetDeviceInfo), p50/p99, against a
#      64-byte Unix-socket ping-pong between two threads;
#   2. blocking 256 MiB writes and reads, against a raw Unix-socket stream;
#   3. the mandelbrot kernel at 2048x2048, forwarded against native;
#   4. checkpoint and restore of a session holding 1 GiB of buffers,
#      against memcpy and a plain file write + fsync of the same bytes.
# The figures in docs/PERFORMANCE.md ("API forwarding (OpenCL)") come from
# this script. Peak memory: about 4.5 GiB (1 GiB in the session's worker,
# 1 GiB in the restored worker, 2 GiB for the memcpy baseline).
#
#   tools/forwarding_bench.sh [benchmark flags...]
#       e.g. --only latency,bulk   --iters 50000   --ckpt-buffers 2
#
# Environment:
#   VGPU_FORWARDING_BENCH_JSON        where to keep the JSON results
#                                     (default /tmp/forwarding_bench-<date>.json)
#   VGPU_FORWARDING_BENCH_DISK_CACHE  bazel --disk_cache
#                                     (default ~/.cache/vgpu-migrate/bazel-disk)
set -euo pipefail
cd "$(dirname "$0")/.."

stamp="$(date +%Y%m%d-%H%M%S)"
json="${VGPU_FORWARDING_BENCH_JSON:-/tmp/forwarding_bench-${stamp}.json}"
disk_cache="${VGPU_FORWARDING_BENCH_DISK_CACHE:-$HOME/.cache/vgpu-migrate/bazel-disk}"

targets=(//agents/forwarding/bench:forwarding_bench
         //agents/forwarding/backend:vgpu-cl-backend
         //agents/forwarding/guest:libvgpu-opencl.so)
echo "==> Building ${targets[*]} (-c opt, disk cache ${disk_cache})"
# --symlink_prefix=/ leaves bazel-bin and friends pointing where they were,
# for whoever else builds in this checkout.
bazel build -c opt --symlink_prefix=/ --disk_cache="${disk_cache}" "${targets[@]}"
bin_dir="$(bazel info -c opt bazel-bin 2>/dev/null)/agents/forwarding"
bench="${bin_dir}/bench/forwarding_bench"
backend="${bin_dir}/backend/vgpu-cl-backend"
library="${bin_dir}/guest/libvgpu-opencl.so"
for f in "${bench}" "${backend}" "${library}"; do
  [ -f "${f}" ] || { echo "build output missing: ${f}" >&2; exit 1; }
done

echo
echo "==> Machine"
echo "date:       $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cores:      $(nproc)"
echo "cpu:        $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "memory:     $(free -g | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
echo "os:         $(. /etc/os-release && echo "${PRETTY_NAME}"), kernel $(uname -r)"
echo "opencl:     $(dpkg-query -W -f='pocl ${Version}' pocl-opencl-icd 2>/dev/null || echo 'pocl ?'), $(dpkg-query -W -f='ocl-icd ${Version}' ocl-icd-libopencl1 2>/dev/null || echo 'ocl-icd ?')"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
echo "busiest:    $(ps -eo pcpu=,comm= --sort=-pcpu | head -n3 | awk '{printf "%s %s%%; ", $2, $1}')"

cmd=("${bench}" --backend "${backend}" --library "${library}" --json-out "${json}" "$@")
echo
echo "==> Running (about a minute on 2 cores)"
echo "command:    ${cmd[*]}"
echo
rc=0
"${cmd[@]}" || rc=$?
echo
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (after the run)"
echo "JSON results: ${json}"
exit "${rc}"
