#!/usr/bin/env bash
# Builds and runs the emulated-agent benchmark
# (//agents/emulated/bench:agent_bench) against real vgpu-emu-device
# processes, and prints dirty-page extraction against memcpy of the same
# bytes (same process, same run) and the pre-copy convergence of 1 GiB of
# VRAM dirtied at 64 MiB/s. The figures in docs/PERFORMANCE.md
# ("Device-emulation agent") come from this script.
#
#   tools/agent_bench.sh [benchmark flags...]   e.g. --benchmark_filter=extract
#
# Environment:
#   VGPU_AGENT_BENCH_MIB         VRAM of the extraction device, MiB (256)
#   VGPU_AGENT_BENCH_CONV_MIB    VRAM of the convergence devices, MiB (1024)
#   VGPU_AGENT_BENCH_DIRTY_MIBS  dirty rate of the counter workload, MiB/s (64)
#   VGPU_AGENT_BENCH_STOP_KIB    pre-copy stops at this many pending KiB (256)
#   VGPU_AGENT_BENCH_MAX_ROUNDS  ... or after this many rounds (30)
#   VGPU_AGENT_BENCH_JSON        where to keep the JSON results
#                                (default /tmp/agent_bench-<date>.json; the
#                                per-round figures go next to it,
#                                <name>.rounds.json)
set -euo pipefail
cd "$(dirname "$0")/.."

stamp="$(date +%Y%m%d-%H%M%S)"
json="${VGPU_AGENT_BENCH_JSON:-/tmp/agent_bench-${stamp}.json}"
rounds="${json%.json}.rounds.json"

echo "==> Building //agents/emulated/bench:agent_bench and the device (-c opt)"
bazel build -c opt //agents/emulated/bench:agent_bench \
  //agents/emulated:vgpu-emu-device
# Ask for the opt output directory rather than following the bazel-bin
# symlink, which a concurrent build in another mode may repoint.
bin_dir="$(bazel info -c opt bazel-bin 2>/dev/null)"
bin="${bin_dir}/agents/emulated/bench/agent_bench"
device="${bin_dir}/agents/emulated/vgpu-emu-device"

echo
echo "==> Machine"
echo "cores:      $(nproc)"
echo "cpu:        $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "memory:     $(free -g | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
echo "os:         $(. /etc/os-release && echo "${PRETTY_NAME}"), kernel $(uname -r)"
echo "date:       $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
echo "busiest:    $(ps -eo pcpu,comm --sort=-pcpu | sed -n '2,4p' | awk '{printf "%s %s%%; ", $2, $1}')"
echo "extraction: ${VGPU_AGENT_BENCH_MIB:-256} MiB of VRAM"
echo "convergence: ${VGPU_AGENT_BENCH_CONV_MIB:-1024} MiB of VRAM at" \
  "${VGPU_AGENT_BENCH_DIRTY_MIBS:-64} MiB/s"

echo
echo "==> Running the benchmark (about two minutes on 2 cores); JSON goes to ${json}"
VGPU_AGENT_BENCH_ROUNDS_JSON="${rounds}" "${bin}" --device="${device}" \
  --benchmark_format=console \
  --benchmark_out="${json}" --benchmark_out_format=json "$@"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (after the run)"

echo
echo "==> Summary (medians when repetitions > 1)"
python3 - "${json}" "${rounds}" <<'PY'
import json
import os
import sys

with open(sys.argv[1]) as f:
    doc = json.load(f)
rounds = {}
if os.path.exists(sys.argv[2]):
    with open(sys.argv[2]) as f:
        rounds = json.load(f)

# name -> entry; medians of repeated runs, else the single run.
runs = {}
for b in doc["benchmarks"]:
    name = b.get("run_name", b["name"])
    for suffix in ("/manual_time", "/real_time", "/iterations:1",
                   "/repeats:1"):
        name = name.replace(suffix, "")
    if "error_occurred" in b:
        print("ERROR in %s: %s" % (name, b.get("error_message", "?")))
        continue
    if b.get("run_type") == "aggregate":
        if b.get("aggregate_name") != "median":
            continue
    elif b.get("repetitions", 1) > 1:
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


ctx = doc.get("context", {})
sets = [s for s in ("all", "5pct", "64pages")
        if get("extract", s) or get("memcpy", s)]
if sets:
    print("Extraction: %d MiB of VRAM-like bytes; zstd %s, %s KiB chunks; "
          "MiB/s of page bytes\n" % (
              int(ctx.get("extract_vram_bytes", 0)) >> 20,
              ctx.get("zstd_level", "?"),
              int(ctx.get("chunk_bytes", 0)) >> 10))
    rows = []
    for s in sets:
        pages = counter("memcpy", s, "pages") or counter("extract", s, "pages")
        e1, e2 = mibs("extract", s, 1), mibs("extract", s, 2)
        m = mibs("memcpy", s)
        rows.append([s, fmt(pages), fmt(pages and pages * 4096 / MIB, "{:.1f}"),
                     fmt(e1), fmt(e2), fmt(m),
                     fmt(div(e1, m), "{:.3f}x"), fmt(div(e2, m), "{:.3f}x"),
                     fmt(millis("extract", s, 1), "{:.2f}"),
                     fmt(millis("extract", s, 2), "{:.2f}"),
                     fmt(millis("memcpy", s), "{:.3f}"),
                     fmt(counter("extract", s, "max_ms", 1), "{:.2f}"),
                     fmt(counter("extract", s, "max_ms", 2), "{:.2f}")])
    table(["set", "pages", "MiB", "Save 1T", "Save 2T", "memcpy",
           "Save/memcpy 1T", "Save/memcpy 2T", "Save 1T ms", "Save 2T ms",
           "memcpy ms", "slowest 1T ms", "slowest 2T ms"], rows)

    print("Where the time goes (MiB/s; encode = the same ImageWriter calls "
          "on the same pages, no agent):")
    rows = []
    for s in sets:
        e1, e2 = mibs("extract", s, 1), mibs("extract", s, 2)
        c1, c2 = mibs("encode", s, 1), mibs("encode", s, 2)
        rows.append([s, fmt(c1), fmt(c2), fmt(div(e1, c1), "{:.2f}x"),
                     fmt(div(e2, c2), "{:.2f}x"), fmt(div(e2, e1), "{:.2f}x"),
                     fmt(counter("extract", s, "cores", 1), "{:.2f}"),
                     fmt(counter("extract", s, "cores", 2), "{:.2f}"),
                     fmt(counter("extract", s, "ratio", 1), "{:.2f}")])
    table(["set", "encode 1T", "encode 2T", "Save/encode 1T",
           "Save/encode 2T", "Save 2T/1T", "cores 1T", "cores 2T",
           "ratio"], rows)
    first = counter("extract", "all", "initial_pass_ms", 1)
    if first:
        size = int(ctx.get("extract_vram_bytes", 0))
        print("First pass (PRE_COPY's initial Save of every page, the first "
              "read of VRAM by this process;\n 1 writer thread, discarding "
              "sink): %.0f ms = %.0f MiB/s, %d page faults; later passes of "
              "the\n same pages (Save 1T above): %.0f ms\n" % (
                  first, size / MIB / (first / 1e3),
                  counter("extract", "all", "initial_pass_faults", 1) or 0,
                  millis("extract", "all", 1)))
    p = get("pending", "clean")
    if p:
        print("Pending() with nothing dirty (one %d-byte bitmap round trip): "
              "%.1f us\n" % (p.get("bitmap_bytes", 0),
                             millis("pending", "clean") * 1e3))

ring = runs.get("stop_copy/full_ring/threads:1")
if ring:
    print("Stop-copy with %d WRITEs of 64 KiB queued in the ring (engine at "
          "20 ms a command):" % ring.get("queued_writes", 0))
    table(["Pending() in pre-copy B", "Pending() after quiesce B", "exact",
           "final Save B", "of which ring blob B", "final / pending",
           "quiesce ms", "final Save ms", "SaveRing alone ms"],
          [[fmt(ring.get("pending_precopy")), fmt(ring.get("pending_stopcopy")),
            "yes" if ring.get("pending_exact") else "no",
            fmt(ring.get("final_raw_bytes")), fmt(ring.get("ring_blob_bytes")),
            fmt(ring.get("final_over_pending"), "{:.1f}x"),
            fmt(ring.get("quiesce_ms"), "{:.1f}"),
            fmt(ring.get("final_save_ms"), "{:.0f}"),
            fmt(ring.get("save_ring_ms"), "{:.0f}")]])
    print("  Pending() >= final Save (the contract's pessimistic figure): %s\n"
          % ("met" if ring.get("final_over_pending", 99) <= 1.0 else "MISSED"))

# Convergence: every repetition on its own (one migration each).
conv = {}
for b in doc["benchmarks"]:
    name = b.get("run_name", b["name"])
    for suffix in ("/manual_time", "/real_time", "/iterations:1",
                   "/repeats:3", "/repeats:1"):
        name = name.replace(suffix, "")
    if (not name.startswith("convergence/") or "error_occurred" in b
            or b.get("run_type") == "aggregate"):
        continue
    conv.setdefault(name, []).append(b)
if conv:
    print("Convergence: %d MiB of VRAM, counter workload at %s MiB/s; "
          "pre-copy stops at %d KiB pending, when it stops shrinking, or "
          "after %s rounds; each row is one migration\n" % (
              int(ctx.get("convergence_vram_bytes", 0)) >> 20,
              ctx.get("dirty_mib_per_second", "?"),
              int(ctx.get("stop_bytes", 0)) >> 10,
              ctx.get("max_rounds", "?")))
    rows = []
    for n in sorted(conv):
        for i, b in enumerate(conv[n]):
            r = rounds.get(n, [])
            reason = r[i]["reason"] if i < len(r) else "?"
            rows.append(["%s #%d" % (n.replace("convergence/", ""), i + 1),
                         fmt(b.get("max_dirty_MiBps")),
                         fmt(b.get("alone_dirty_MiBps"), "{:.1f}"),
                         fmt(b.get("precopy_dirty_MiBps"), "{:.1f}"),
                         fmt(b.get("rounds")), reason,
                         "%s / %s" % (fmt(b.get("first_round_MiB")),
                                      fmt(b.get("first_round_ms"))),
                         fmt(b.get("pending_at_stop")),
                         fmt(b.get("pending_quiesced")),
                         fmt(b.get("final_raw_bytes")),
                         fmt(b.get("final_stored_bytes")),
                         fmt(b.get("downtime_ms"), "{:.2f}"),
                         fmt(b.get("total_raw_MiB"), "{:.1f}"),
                         fmt(b.get("total_stored_MiB"), "{:.1f}"),
                         fmt(b.get("wall_s"), "{:.2f}"),
                         fmt(b.get("cores"), "{:.2f}"),
                         fmt(b.get("dev_cores"), "{:.2f}"),
                         "ok" if b.get("counters_ok") else "BAD"])
    table(["run (fill/writer threads)", "max MiB/s", "alone MiB/s",
           "pre-copy MiB/s", "rounds", "stopped because", "round 0 MiB / ms",
           "pending at stop B", "after quiesce B", "final Save B",
           "final stored B", "downtime ms", "sent MiB", "stored MiB",
           "wall s", "cores", "dev cores", "counters"], rows)
    print("(dirty rates: max = the workload unthrottled for 1 s; alone = "
          "throttled, before pre-copy;\n pre-copy = while the agent copies. "
          "Pending figures include the agent's 65536-byte estimate for\n "
          "registers and ring until they are sent; the final Save's bytes "
          "include them. downtime = quiesce +\n final Save. cores: CPU "
          "seconds per second of this process (agent, writer, workload) and "
          "of the device.)\n")
    for n in sorted(rounds):
        for i, r in enumerate(rounds[n]):
            print("%s #%d, per round:" % (n, i + 1))
            rows = []
            for x in r["rounds"]:
                rows.append([str(x["round"]),
                             fmt(x["raw_bytes"] / 1024.0, "{:.0f}"),
                             fmt(x["stored_bytes"] / 1024.0, "{:.0f}"),
                             fmt(x["save_ms"], "{:.2f}"),
                             fmt(x["pending_after"] / 1024.0, "{:.0f}")])
            sc = r["stop_copy"]
            rows.append(["stop-copy",
                         fmt(sc["final_raw_bytes"] / 1024.0, "{:.1f}"),
                         fmt(sc["final_stored_bytes"] / 1024.0, "{:.1f}"),
                         fmt(sc["quiesce_ms"] + sc["final_save_ms"], "{:.2f}"),
                         "0"])
            table(["round", "raw KiB", "stored KiB", "ms",
                   "pending KiB after"], rows)

    print("Verdicts:")
    for n in sorted(conv):
        got = [b.get("precopy_dirty_MiBps", 0) for b in conv[n]]
        target = conv[n][0].get("target_dirty_MiBps", 0)
        left = [b.get("pending_quiesced", 0) for b in conv[n]]
        final = [b.get("final_raw_bytes", 0) for b in conv[n]]
        down = [b.get("downtime_ms", 0) for b in conv[n]]
        print("  %s: dirty rate during pre-copy %.1f-%.1f MiB/s of %.0f: %s"
              % (n, min(got), max(got), target,
                 "sustained" if min(got) >= 0.95 * target else
                 "NOT sustained (figures are at the rate reached)"))
        print("  %s: left at stop-copy %d-%d bytes pending, final Save "
              "%d-%d bytes, downtime %.2f-%.2f ms"
              % (n, min(left), max(left), min(final), max(final), min(down),
                 max(down)))
PY
echo
echo "JSON results: ${json} (per round: ${rounds})"
