#!/usr/bin/env bash
# Builds the fuzz targets (state-codecs decoders; what vgpud computes from a
# peer's input) with clang + libFuzzer + ASan and runs
# each for a bounded time from a scratch copy of its committed seed corpus.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET]    (default 30)
#
# Prints one line per target, "FUZZ <target> PASS <runs> execs" or
# "FUZZ <target> FAIL (see <log>)", and exits non-zero if any target failed.
# Everything it writes is under .fuzz-out/ (git-ignored): the Bazel output
# base, logs/, corpus/ (scratch) and artifacts/ (crashing inputs).
# See docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi

out="$PWD/.fuzz-out"
# A separate output base: the clang build never evicts the main gcc cache.
bazel=(bazel "--output_base=$out/bazel")
# --symlink_prefix=/ creates no bazel-* links, so the workspace's links keep
# pointing at the main output base. --strip=never keeps line numbers for
# ASan stack traces. The disk cache is the one tools/test.sh uses, shared by
# every clone on the machine (clang and gcc actions never collide in it).
build_flags=(--config=fuzz --symlink_prefix=/ --strip=never
  "--disk_cache=$HOME/.cache/vgpu-migrate/bazel-disk")

# package:target:seed corpus directory under PACKAGE/corpus
targets=(
  state-codecs/fuzz:manifest_fuzzer:manifest
  state-codecs/fuzz:section_fuzzer:section
  state-codecs/fuzz:stream_fuzzer:stream
  migrator/fuzz:peer_input_fuzzer:peer_input
  migrator/fuzz:domain_xml_fuzzer:domain_xml
  agents/mediated/fuzz:mdev_stream_fuzzer:mdev_stream
  agents/mediated/fuzz:mdev_load_fuzzer:mdev_load
  agents/forwarding/fuzz:cl_request_fuzzer:cl_request
  agents/forwarding/fuzz:cl_log_fuzzer:cl_log
)

mkdir -p "$out/logs" "$out/artifacts"
labels=()
for t in "${targets[@]}"; do
  IFS=: read -r pkg name _ <<<"$t"
  labels+=("//$pkg:$name")
done

build_log="$out/logs/build.log"
start=$(date +%s)
if ! "${bazel[@]}" build "${build_flags[@]}" "${labels[@]}" >"$build_log" 2>&1; then
  grep -v -e 'linux-sandbox' -e 'Cannot export local symbol' "$build_log" |
    tail -n 40 >&2 || true
  echo "FUZZ build FAIL (see $build_log)"
  exit 1
fi
echo "fuzz build: $(( $(date +%s) - start ))s" >&2
bin="$("${bazel[@]}" info "${build_flags[@]}" bazel-bin 2>/dev/null)"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:symbolize=1}"
if [[ -z "${ASAN_SYMBOLIZER_PATH:-}" ]] && command -v llvm-symbolizer >/dev/null; then
  export ASAN_SYMBOLIZER_PATH="$(command -v llvm-symbolizer)"
fi

failed=0
for t in "${targets[@]}"; do
  IFS=: read -r pkg name seeds_dir <<<"$t"
  seeds="$pkg/corpus/$seeds_dir"
  corpus="$out/corpus/$name"
  log="$out/logs/$name.log"
  # Fuzz a scratch copy: new inputs libFuzzer keeps never touch the seeds.
  rm -rf "$corpus"
  mkdir -p "$corpus"
  cp -R "$seeds/." "$corpus/"
  rc=0
  "$bin/$pkg/$name" \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -max_len=1048576 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$name-" \
    "$corpus" >"$log" 2>&1 || rc=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
  if [[ $rc -eq 0 && -n "$runs" ]]; then
    echo "FUZZ $name PASS $runs execs"
  else
    echo "FUZZ $name FAIL (see $log)"
    failed=1
  fi
done
exit "$failed"
