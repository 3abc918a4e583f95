#!/usr/bin/env bash
# The demo: what vgpu-migrate can do today, end to end, on this machine.
# Until the migrator (vgpud, two hosts) lands, this is the most complete
# flow there is: live-migrate an emulated vGPU between two device processes
# on this host while a guest workload runs, and watch the workload carry on
# at the destination; then the state-image and snapshot path every migration
# and snapshot rides on: capture a vGPU's state into an image, inspect,
# verify, re-encode, extract, see damage refused with the place it broke,
# snapshot into a checkpoint store, dedup, restore, verify, delete, GC.
# Usage: tools/demo.sh [VRAM_SIZE]   (default 256M)
set -euo pipefail
cd "$(dirname "$0")/.."
vram="${1:-256M}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setup (installs missing Debian packages; idempotent)"
tools/setup.sh

step "build the tools"
bazel build --disk_cache="$HOME/.cache/vgpu-migrate/bazel-disk" \
  //state-codecs/tools:vgpu-image //store/tools:vgpu-store \
  //agents/emulated:vgpu-emu-device //agents/emulated:vgpu-emu-workload \
  //agents/emulated/tools:vgpu-emu-migrate 2>&1 \
  | grep -E '^(INFO: Build|ERROR)' || true
bin="$(bazel info bazel-bin 2>/dev/null)"
tool="$bin/state-codecs/tools/vgpu-image"
store_tool="$bin/store/tools/vgpu-store"
device="$bin/agents/emulated/vgpu-emu-device"
workload="$bin/agents/emulated/vgpu-emu-workload"
migrate="$bin/agents/emulated/tools/vgpu-emu-migrate"
for t in "$tool" "$store_tool" "$device" "$workload" "$migrate"; do
  [ -x "$t" ] || { echo "demo: build failed ($t missing)" >&2; exit 1; }
done

work="$(mktemp -d /tmp/vgpu-demo.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step "live migration: an emulated vGPU ($vram VRAM) with a guest workload running"
"$device" --socket "$work/src.sock" --vram "$vram" --name vm1-gpu0 2>"$work/src.log" &
pids+=($!)
"$device" --socket "$work/dst.sock" --vram "$vram" --name vm1-gpu0 --incoming \
  2>"$work/dst.log" &
pids+=($!)
for s in src dst; do
  for _ in $(seq 100); do [ -S "$work/$s.sock" ] && break; sleep 0.05; done
done
echo "source device and an --incoming destination device started"
# The guest keeps incrementing a counter in every VRAM page, in order,
# at 8000 pages (31 MiB) per second, and draws frames.
"$workload" --socket "$work/src.sock" --pages-per-second 8000 \
  >"$work/workload-src.log" 2>&1 &
wl=$!
sleep 2
"$migrate" --from "$work/src.sock" --to "$work/dst.sock"
kill -9 "$wl" 2>/dev/null || true
wait "$wl" 2>/dev/null || true
echo "source workload, last progress line: $(tail -1 "$work/workload-src.log")"
echo "the workload now runs on the destination, carrying on from the migrated counters:"
"$workload" --socket "$work/dst.sock" --duration 2 2>&1 | sed -n '1p;$p'

step "capture: a vGPU with $vram of VRAM -> $work/vm1.vgi"
"$tool" sample --vram "$vram" "$work/vm1.vgi"

step "inspect: vgpu-image show"
"$tool" show "$work/vm1.vgi"

step "verify: every bound and checksum (exit 0 only if all hold)"
"$tool" verify "$work/vm1.vgi"

step "reproducible: decode and re-encode must give the same bytes"
"$tool" recode "$work/vm1.vgi" "$work/vm1-recoded.vgi"

step "extract: the register bank, as a hex dump"
"$tool" cat "$work/vm1.vgi" dispi -o "$work/dispi.bin"
od -A d -t x2 "$work/dispi.bin" | head -3

step "damage: flip one byte in the middle of VRAM and verify again"
cp "$work/vm1.vgi" "$work/damaged.vgi"
size=$(stat -c %s "$work/damaged.vgi")
printf '\x5a' | dd of="$work/damaged.vgi" bs=1 seek=$((size / 2)) conv=notrunc status=none
if "$tool" verify "$work/damaged.vgi"; then
  echo "demo: the damaged image was accepted, which is a bug" >&2
  exit 1
fi
echo "(refused, as it must be: exit status 1)"

step "cut: a stream that stops early is known to be incomplete"
head -c $((size / 3)) "$work/vm1.vgi" > "$work/cut.vgi"
"$tool" verify --json "$work/cut.vgi" || true

store=("$store_tool" --store "$work/store")
step "snapshot: put the image into a checkpoint store (RocksDB at $work/store)"
"${store[@]}" put "$work/vm1.vgi" --tag before-upgrade

step "snapshot again: the same state captured later adds no chunk bytes (dedup)"
"$tool" sample --vram "$vram" --seed 1 "$work/vm1-later.vgi" >/dev/null
"${store[@]}" put "$work/vm1-later.vgi" --tag after-upgrade
"${store[@]}" list

step "restore: export the first snapshot as a complete image and check it"
first=$("${store[@]}" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
"${store[@]}" export "$first" "$work/restored.vgi"
"$tool" verify "$work/restored.vgi"

step "verify every chunk in the store, delete a snapshot, collect garbage"
"${store[@]}" verify
"${store[@]}" delete "$first"
"${store[@]}" gc
"${store[@]}" stats

step "done"
echo "Machine-readable forms: add --json. Full help: $tool --help and $store_tool --help"
