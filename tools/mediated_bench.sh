#!/usr/bin/env bash
# Builds and runs the mediated agent's STOP_COPY benchmark
# (//agents/mediated:stopcopy_bench) and prints the time a reference
# mediated vGPU spends in STOP_COPY (the device's share of the downtime),
# with pre-copy against without, next to memcpy of the same bytes measured
# in the same process, and the check of each mode's image on a fresh
# destination.
#
#   tools/mediated_bench.sh [benchmark flags...]   e.g. --reps 3 --vram-mib 256
#
# Defaults: 4 contexts, 512 MiB VRAM share, RefWorkload at 64 MiB/s, 5 runs
# per mode plus one check run each, zstd 1, writer threads = cores; see
# `stopcopy_bench --help`.
#
# Environment:
#   VGPU_MEDIATED_BENCH_JSON        where to keep the JSON results
#                                   (default /tmp/mediated_bench-<date>.json)
#   VGPU_MEDIATED_BENCH_DISK_CACHE  bazel --disk_cache
#                                   (default ~/.cache/vgpu-migrate/bazel-disk)
set -euo pipefail
cd "$(dirname "$0")/.."

stamp="$(date +%Y%m%d-%H%M%S)"
json="${VGPU_MEDIATED_BENCH_JSON:-/tmp/mediated_bench-${stamp}.json}"
disk_cache="${VGPU_MEDIATED_BENCH_DISK_CACHE:-$HOME/.cache/vgpu-migrate/bazel-disk}"

echo "==> Building //agents/mediated:stopcopy_bench (-c opt, disk cache ${disk_cache})"
# --symlink_prefix=/ leaves bazel-bin and friends pointing where they were,
# for whoever else builds in this checkout; the opt outputs live in their
# own configuration directory, so the fastbuild ones stay as they are.
bazel build -c opt --symlink_prefix=/ --disk_cache="${disk_cache}" \
  //agents/mediated:stopcopy_bench
# Ask for the opt output directory rather than following a symlink.
bin="$(bazel info -c opt bazel-bin 2>/dev/null)/agents/mediated/stopcopy_bench"
[ -x "${bin}" ] || { echo "build output missing: ${bin}" >&2; exit 1; }

echo
echo "==> Machine"
echo "date:       $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cores:      $(nproc)"
echo "cpu:        $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "memory:     $(free -g | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
echo "os:         $(. /etc/os-release && echo "${PRETTY_NAME}"), kernel $(uname -r)"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
echo "busiest:    $(ps -eo pcpu=,comm= --sort=-pcpu | head -n3 | awk '{printf "%s %s%%; ", $2, $1}')"

echo
echo "==> Running the benchmark (about a minute on 2 cores); JSON goes to ${json}"
rc=0
"${bin}" --json-out "${json}" "$@" || rc=$?
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (after the run)"
echo
echo "JSON results: ${json}"
exit "${rc}"
