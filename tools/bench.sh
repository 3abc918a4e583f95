#!/usr/bin/env bash
# Builds and runs the state-codecs benchmark (//state-codecs/bench:codec_bench)
# and prints how the codec compares with the zstd command-line tool measured
# in the same run. The figures in docs/PERFORMANCE.md come from this script.
#
#   tools/bench.sh [benchmark flags...]     e.g. --benchmark_filter=vram
#
# Environment:
#   VGPU_BENCH_MIB   size of each data set in MiB (default 64)
#   VGPU_BENCH_JSON  where to keep the JSON results
#                    (default /tmp/codec_bench-<date>.json)
set -euo pipefail
cd "$(dirname "$0")/.."

json="${VGPU_BENCH_JSON:-/tmp/codec_bench-$(date +%Y%m%d-%H%M%S).json}"

echo "==> Building //state-codecs/bench:codec_bench (-c opt)"
bazel build -c opt //state-codecs/bench:codec_bench
# Ask for the opt output directory rather than following the bazel-bin
# symlink, which a concurrent build in another mode may repoint.
bin="$(bazel info -c opt bazel-bin 2>/dev/null)/state-codecs/bench/codec_bench"

echo
echo "==> Machine"
echo "cores:      $(nproc)"
echo "cpu:        $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "os:         $(. /etc/os-release && echo "${PRETTY_NAME}")"
echo "zstd CLI:   $(command -v zstd >/dev/null && zstd --version || echo 'not found')"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
echo "data sets:  ${VGPU_BENCH_MIB:-64} MiB each"

echo
echo "==> Running the benchmark (several minutes on 2 cores); JSON goes to ${json}"
"${bin}" --benchmark_format=console \
  --benchmark_out="${json}" --benchmark_out_format=json "$@"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (after the run)"

echo
echo "==> Summary (medians when repetitions > 1)"
python3 - "${json}" <<'PY'
import json
import sys

with open(sys.argv[1]) as f:
    doc = json.load(f)

# name -> entry; medians of repeated runs, else the single run.
runs = {}
for b in doc["benchmarks"]:
    name = b.get("run_name", b["name"])
    for suffix in ("/manual_time", "/real_time"):
        name = name.replace(suffix, "")
    if b.get("run_type") == "aggregate":
        if b.get("aggregate_name") != "median":
            continue
    elif b.get("repetitions", 1) > 1 or "error_occurred" in b:
        continue
    runs[name] = b

MIB = float(1 << 20)


def get(what, data, threads=1):
    return runs.get("%s/%s/threads:%d" % (what, data, threads))


def mibs(what, data, threads=1):
    b = get(what, data, threads)
    return b["bytes_per_second"] / MIB if b and "bytes_per_second" in b else None


def counter(what, data, name, threads=1):
    b = get(what, data, threads)
    return b.get(name) if b else None


def millis(what, data, threads=1):
    b = get(what, data, threads)
    if not b:
        return None
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
    return b["real_time"] * scale


def div(a, b):
    return a / b if a is not None and b else None


def fmt(v, spec="{:.0f}"):
    return "n/a" if v is None else spec.format(v)


def table(header, rows):
    cols = [header] + rows
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(r, widths))) + " |"
    print(line(header))
    print("|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":")
                         for i, w in enumerate(widths)) + "|")
    for r in rows:
        print(line(r))
    print()


sets = [s for s in ("random", "vram", "zero") if get("encode", s)]
ctx = doc.get("context", {})
print("data sets of %s MiB, chunk %s KiB, zstd level %s (library %s); "
      "MiB/s of raw bytes\n" % (
          int(ctx.get("set_bytes", 0)) >> 20,
          int(ctx.get("chunk_bytes", 0)) >> 10,
          ctx.get("zstd_level", "?"), ctx.get("zstd_library", "?")))

print("Single thread, ours vs `zstd -1 -T1` / `zstd -d`:")
rows = []
for s in sets:
    e, ce = mibs("encode", s), mibs("cli_encode", s)
    d, cd = mibs("decode", s), mibs("cli_decode", s)
    rows.append([s, fmt(e), fmt(ce), fmt(div(e, ce), "{:.2f}x"),
                 fmt(d), fmt(cd), fmt(div(d, cd), "{:.2f}x")])
table(["data", "encode", "CLI encode", "ours/CLI",
       "decode", "CLI decode", "ours/CLI"], rows)

print("Two threads, ours (2 threads / 1 thread) and `zstd -1 -T2`:")
rows = []
for s in sets:
    e1, e2 = mibs("encode", s, 1), mibs("encode", s, 2)
    d1, d2 = mibs("decode", s, 1), mibs("decode", s, 2)
    c1, c2 = mibs("cli_encode", s, 1), mibs("cli_encode", s, 2)
    rows.append([s, fmt(e2), fmt(div(e2, e1), "{:.2f}x"),
                 fmt(counter("encode", s, "cores", 2), "{:.2f}"),
                 fmt(d2), fmt(div(d2, d1), "{:.2f}x"),
                 fmt(counter("decode", s, "cores", 2), "{:.2f}"),
                 fmt(c2), fmt(div(c2, c1), "{:.2f}x")])
table(["data", "encode 2T", "scaling", "cores", "decode 2T", "scaling",
       "cores", "CLI -T2", "CLI scaling"], rows)
print("(cores: CPU seconds per wall second during the 2-thread run; near 1.0\n"
      " means the second core was not available, e.g. busy with other work)\n")

print("Compression ratio (raw / stored bytes); ms per data set, one thread:")
rows = []
for s in sets:
    rows.append([s, fmt(counter("encode", s, "ratio"), "{:.3f}"),
                 fmt(counter("cli_encode", s, "ratio"), "{:.3f}"),
                 fmt(millis("encode", s), "{:.1f}"),
                 fmt(millis("decode", s), "{:.1f}"),
                 fmt(counter("decode", s, "faults"), "{:.0f}"),
                 fmt(millis("decode_visit", s), "{:.1f}"),
                 fmt(millis("memcpy", s), "{:.1f}")])
table(["data", "ours", "CLI", "encode ms", "ReadSection ms",
       "page faults", "ReadChunks ms", "memcpy ms"], rows)

print("Where the time goes (one thread, MiB/s):")
rows = []
for s in sets:
    rows.append([s, fmt(mibs("memcpy", s)), fmt(mibs("checksum", s)),
                 fmt(mibs("is_all_zero", s)), fmt(mibs("lib_encode", s)),
                 fmt(mibs("chunk_encode", s)), fmt(mibs("lib_encode_whole", s)),
                 fmt(mibs("cli_encode_st", s)), fmt(mibs("lib_decode", s)),
                 fmt(mibs("decode_visit", s))])
table(["data", "memcpy", "XXH3", "IsAllZero", "zstd lib 256K",
       "ChunkEncoder", "zstd lib 1 frame", "CLI --single-thread",
       "zstd lib dec 256K", "ReadChunks"], rows)

print("Goals:")
for s in sets:
    for what in ("encode", "decode"):
        r = div(mibs(what, s), mibs("cli_" + what, s))
        verdict = "n/a" if r is None else ("met" if r >= 0.9 else "MISSED")
        print("  %-6s %s, 1 thread >= 0.9x CLI: %s (%s)"
              % (s, what, verdict, fmt(r, "{:.2f}x")))
for s in sets:
    for what in ("encode", "decode"):
        r = div(mibs(what, s, 2), mibs(what, s, 1))
        verdict = "n/a" if r is None else ("met" if r >= 1.8 else "MISSED")
        print("  %-6s %s, 2 threads >= 1.8x 1 thread: %s (%s)"
              % (s, what, verdict, fmt(r, "{:.2f}x")))
# "Nearly free": zero data costs no more than copying it once.
for what in ("encode", "decode", "decode_visit"):
    t, m = millis(what, "zero"), millis("memcpy", "zero")
    if t is not None and m is not None:
        print("  zero   %s <= memcpy time: %s (%.1f ms vs %.1f ms)"
              % (what, "met" if t <= m else "MISSED", t, m))
PY
echo
echo "JSON results: ${json}"
