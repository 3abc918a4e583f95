#!/usr/bin/env bash
# Builds and runs the checkpoint store benchmark (//store/bench:store_bench)
# and prints how ingest (Store::Put) and read-back (Store::Read) compare with
# writing the same bytes to a plain file in the same run, and what an
# incremental snapshot costs in stored bytes. The figures in the "Checkpoint
# store" section of docs/PERFORMANCE.md come from this script.
#
#   tools/store_bench.sh [benchmark flags...]   e.g. --benchmark_filter=put
#
# Environment:
#   VGPU_STORE_BENCH_MIB       VRAM of the full image in MiB (default 256)
#   VGPU_STORE_BENCH_INCR_MIB  VRAM behind the incremental snapshot in MiB
#                              (default 1024; needs about 2.5x that in RAM)
#   VGPU_STORE_BENCH_JSON      where to keep the JSON results
#                              (default /tmp/store_bench-<date>.json)
# The stores and files live in a private directory under /tmp, removed at
# the end; the run needs about 1 GiB free there.
set -euo pipefail
cd "$(dirname "$0")/.."

json="${VGPU_STORE_BENCH_JSON:-/tmp/store_bench-$(date +%Y%m%d-%H%M%S).json}"

echo "==> Building //store/bench:store_bench (-c opt)"
bazel build -c opt //store/bench:store_bench
# Ask for the opt output directory rather than following the bazel-bin
# symlink, which a concurrent build in another mode may repoint.
bin="$(bazel info -c opt bazel-bin 2>/dev/null)/store/bench/store_bench"

echo
echo "==> Machine"
echo "date:       $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cores:      $(nproc)"
echo "cpu:        $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "memory:     $(free -g | awk '/^Mem:/ {print $2 " GiB, " $7 " GiB available"}')"
echo "os:         $(. /etc/os-release && echo "${PRETTY_NAME}"), kernel $(uname -r)"
echo "/tmp:       $(df -h --output=source,fstype,avail /tmp | tail -n1 | tr -s ' ')"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
echo "busiest:    $(ps -eo pcpu=,comm= --sort=-pcpu | head -n5 | awk '{printf "%s %s%%; ", $2, $1}')"
echo "sizes:      full image ${VGPU_STORE_BENCH_MIB:-256} MiB of VRAM, incremental on ${VGPU_STORE_BENCH_INCR_MIB:-1024} MiB"

echo
echo "==> Running the benchmark (a few minutes on 2 cores); JSON goes to ${json}"
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
    name = b.get("run_name", b["name"]).replace("/real_time", "")
    if b.get("run_type") == "aggregate":
        if b.get("aggregate_name") != "median":
            continue
    elif b.get("repetitions", 1) > 1 or "error_occurred" in b:
        continue
    runs[name] = b

MIB = float(1 << 20)
ctx = doc.get("context", {})


def mibs(name):
    b = runs.get(name)
    return b["bytes_per_second"] / MIB if b and "bytes_per_second" in b else None


def counter(name, key):
    b = runs.get(name)
    return b.get(key) if b else None


def millis(name):
    b = runs.get(name)
    if not b:
        return None
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
    return b["real_time"] * scale


def div(a, b):
    return a / b if a is not None and b else None


def fmt(v, spec="{:.0f}"):
    return "n/a" if v is None else spec.format(v)


def mb(v):
    return fmt(None if v is None else v / 1e6, "{:.2f}")


def table(header, rows, left=1):
    """A Markdown table; the first `left` columns are text, the rest numbers."""
    cols = [header] + rows
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(
        c.ljust(w) if i < left else c.rjust(w)
        for i, (c, w) in enumerate(zip(r, widths))) + " |"
    print(line(header))
    print("|" + "|".join(("-" * (w + 2)) if i < left else ("-" * (w + 1) + ":")
                         for i, w in enumerate(widths)) + "|")
    for r in rows:
        print(line(r))
    print()


full_mib = int(ctx.get("full_vram_bytes", 0)) >> 20
print("Full image: %d MiB of VRAM-like state, %s MB encoded (64 KiB chunks, "
      "zstd 1). MiB/s of raw state.\n" % (
          full_mib, mb(counter("put_full/sync:1", "image_bytes"))))

print("Ingest: Store::Put against write() + fsync() of the same bytes to a "
      "file (same run, same directory):")
rows = []
for s in (1, 0):
    put = "put_full/sync:%d" % s
    raw = "baseline_file_write/sync:%d" % s
    img = "baseline_file_write_image/sync:%d" % s
    rows.append([
        "sync:%d" % s, fmt(mibs(put)), fmt(millis(put)),
        fmt(mibs(raw)), fmt(div(mibs(put), mibs(raw)), "{:.2f}x"),
        fmt(mibs(img)), fmt(div(mibs(put), mibs(img)), "{:.3f}x"),
        fmt(counter(put, "cores"), "{:.2f}"),
        fmt(counter(put, "faults"), "{:.0f}"),
        fmt(div(counter(put, "written_settled"),
                counter(put, "stored_bytes")), "{:.2f}x")])
table(["put", "Put MiB/s", "Put ms", "file (raw) MiB/s", "Put/file",
       "file (image) MiB/s", "Put/file image", "cores", "page faults",
       "bytes written / stored"], rows)
print("(file (raw): the raw VRAM; file (image): the encoded image, the bytes "
      "a store\n that kept images as files would write. bytes written / "
      "stored counts the\n write-ahead log and the memtable flush that "
      "follows, /proc/self/io.)\n")

print("Read-back: Store::Read into memory, against reading the image file "
      "(page cache warm):")
rows = []
fr = mibs("baseline_file_read_image")
fw = mibs("baseline_file_write_image/sync:1")
for name in ("read_full/threads:0", "read_full/threads:1",
             "read_full_cold/threads:0"):
    rows.append([name, fmt(mibs(name)), fmt(millis(name)),
                 fmt(div(mibs(name), fr), "{:.3f}x"),
                 fmt(div(mibs(name), fw), "{:.3f}x"),
                 fmt(counter(name, "cores"), "{:.2f}"),
                 fmt(counter(name, "faults"), "{:.0f}")])
rows.append(["file read (image)", fmt(fr),
             fmt(millis("baseline_file_read_image"), "{:.1f}"), "1.000x",
             fmt(div(fr, fw), "{:.3f}x"), "", ""])
table(["read", "MiB/s", "ms", "vs file read", "vs file write sync:1",
       "cores", "page faults"], rows)

inc = "incremental"
if inc in runs:
    c = lambda k: counter(inc, k)
    print("Incremental snapshot: %.0f MiB of VRAM, %d pages (%.0f%%) changed, "
          "put on its base (sync:1):" % (
              c("region_bytes") / MIB, c("changed_pages"),
              100.0 * float(ctx.get("changed_fraction", 0.05))))
    table(["bytes", "MB", "x changed raw", "x changed zstd"], [
        ["changed pages, raw", mb(c("changed_bytes")), "1.000", fmt(div(
            c("changed_bytes"), c("changed_zstd_bytes")), "{:.3f}")],
        ["changed pages alone, zstd 1", mb(c("changed_zstd_bytes")),
         fmt(div(c("changed_zstd_bytes"), c("changed_bytes")), "{:.3f}"),
         "1.000"],
        ["incremental image", mb(c("image_bytes")),
         fmt(div(c("image_bytes"), c("changed_bytes")), "{:.3f}"),
         fmt(div(c("image_bytes"), c("changed_zstd_bytes")), "{:.3f}")],
        ["SnapshotInfo.stored_bytes", mb(c("stored_bytes")),
         fmt(c("stored_per_changed"), "{:.3f}"),
         fmt(c("stored_per_changed_zstd"), "{:.3f}")],
        ["on-disk growth, compacted", mb(c("growth_compacted")),
         fmt(c("growth_per_changed"), "{:.3f}"),
         fmt(c("growth_per_changed_zstd"), "{:.3f}")],
        ["  of which chunks", mb(c("growth_chunks")),
         fmt(div(c("growth_chunks"), c("changed_bytes")), "{:.3f}"),
         fmt(div(c("growth_chunks"), c("changed_zstd_bytes")), "{:.3f}")],
        ["  of which snapshot records", mb(c("growth_snapshots")),
         fmt(div(c("growth_snapshots"), c("changed_bytes")), "{:.3f}"),
         fmt(div(c("growth_snapshots"), c("changed_zstd_bytes")), "{:.3f}")],
        ["  of which reference counts", mb(c("growth_refs")),
         fmt(div(c("growth_refs"), c("changed_bytes")), "{:.3f}"),
         fmt(div(c("growth_refs"), c("changed_zstd_bytes")), "{:.3f}")],
        ["on-disk growth, after reopen", mb(c("growth_reopen")),
         fmt(div(c("growth_reopen"), c("changed_bytes")), "{:.3f}"),
         fmt(c("growth_reopen_per_changed_zstd"), "{:.3f}")],
        ["written by the put", mb(c("written_put")),
         fmt(div(c("written_put"), c("changed_bytes")), "{:.3f}"),
         fmt(div(c("written_put"), c("changed_zstd_bytes")), "{:.3f}")],
    ])
    print("Snapshot record: %s MB (%s MB through zstd 1), %d extents naming "
          "%d chunks;\nthe base's record: %s MB, %d extents." % (
              mb(c("record_bytes")), mb(c("record_zstd_bytes")),
              c("record_extents"), c("record_chunks"),
              mb(c("base_record_bytes")), c("base_record_extents")))
    print("Incremental Put: %s ms (%s MiB/s of changed raw bytes); base Put "
          "of %.0f MiB: %.2f s,\n%s MB written for %s MB stored (%.2fx).\n" % (
              fmt(millis(inc)), fmt(mibs(inc)), c("region_bytes") / MIB,
              c("base_put_seconds"), mb(c("base_written_put")),
              mb(c("base_stored_bytes")),
              div(c("base_written_put"), c("base_stored_bytes")) or 0))

print("Where the time goes (one thread unless noted, same %d MiB):" % full_mib)
rows = []
for name, what in (
        ("diag/image_verify", "Put: decode + XXH3 check of the image"),
        ("diag/sha256", "Put and Read: SHA-256, non-zero chunks"),
        ("diag/rocks_put", "Put: bare RocksDB Get + batch + WAL + memtable"),
        ("diag/rocks_sst_ingest", "alternative: SstFileWriter + ingest"),
        ("diag/rocks_get", "Read: bare RocksDB Get (SST, warm)"),
        ("diag/chunk_decode", "Read: zstd decode + XXH3 of every chunk"),
        ("diag/image_encode/threads:1", "Read: re-encode, 1 thread"),
        ("diag/image_encode/threads:0", "Read: re-encode, 1 per core")):
    rows.append([name, what, fmt(millis(name), "{:.0f}"), fmt(mibs(name)),
                 fmt(counter(name, "faults"), "{:.0f}")])
table(["row", "stands for", "ms", "MiB/s", "page faults"], rows, left=2)
fm = "diag/fresh_memory"
if fm in runs:
    print("A page fault costs %s us here (64 MiB of fresh memory written "
          "once: %s ms);\nat that rate Put's %s faults would take about %s ms.\n" % (
              fmt(counter(fm, "us_per_fault"), "{:.1f}"),
              fmt(millis(fm)), fmt(counter("put_full/sync:0", "faults")),
              fmt(None if counter("put_full/sync:0", "faults") is None else
                  counter("put_full/sync:0", "faults") *
                  counter(fm, "us_per_fault") / 1000)))

print("Goals:")
if inc in runs:
    r = c("stored_per_changed")
    print("  incremental stored_bytes <= 1.1x changed bytes: %s (%s)" % (
        "n/a" if r is None else ("met" if r <= 1.1 else "MISSED"),
        fmt(r, "{:.3f}x")))
    r = c("growth_per_changed")
    print("  incremental on-disk growth <= 1.1x changed bytes: %s (%s)" % (
        "n/a" if r is None else ("met" if r <= 1.1 else "MISSED"),
        fmt(r, "{:.3f}x")))
    r = c("stored_per_changed_zstd")
    print("  stricter, stored_bytes <= 1.1x the changed pages compressed "
          "alone: %s (%s)" % (
              "n/a" if r is None else ("met" if r <= 1.1 else "MISSED"),
              fmt(r, "{:.3f}x")))
    r = c("growth_per_changed_zstd")
    print("  stricter, on-disk growth <= 1.1x the changed pages compressed "
          "alone: %s (%s)" % (
              "n/a" if r is None else ("met" if r <= 1.1 else "MISSED"),
              fmt(r, "{:.3f}x")))
for s in (1, 0):
    print("  ingest sync:%d, Put vs file write of the image: %s, of the raw "
          "VRAM: %s (reported; the issue sets no target)" % (
              s,
              fmt(div(mibs("put_full/sync:%d" % s),
                      mibs("baseline_file_write_image/sync:%d" % s)),
                  "{:.3f}x"),
              fmt(div(mibs("put_full/sync:%d" % s),
                      mibs("baseline_file_write/sync:%d" % s)), "{:.2f}x")))
print("  read-back vs file read of the image: %s (reported; no target)" %
      fmt(div(mibs("read_full/threads:0"), fr), "{:.3f}x"))
PY
echo
echo "JSON results: ${json}"
