#!/usr/bin/env bash
# The demo: two hosts on this machine, each running vgpud with its own
# checkpoint store, talking mutual TLS. A VM with an emulated vGPU runs the
# counter workload on host1 and is live-migrated to host2 with
# `vgpu-migrate --to host2 vm1`; the workload then carries on on host2 with
# its invariant checked. As root the hosts are network namespaces joined by
# a veth link; otherwise they share loopback. Then a snapshot on host2, a
# VM with two mediated vGPUs (the reference mediated GPU, VFIO migration v2
# semantics) migrated the same way, and a tour of the state-image and
# store tools every migration rides on.
# Usage: tools/demo.sh [VRAM_SIZE]   (default 256M)
set -euo pipefail
cd "$(dirname "$0")/.."
vram="${1:-256M}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setup (installs missing Debian packages; idempotent)"
tools/setup.sh

step "build"
bazel build --disk_cache="$HOME/.cache/vgpu-migrate/bazel-disk" \
  //migrator:vgpud //migrator:vgpu-migrate \
  //state-codecs/tools:vgpu-image //store/tools:vgpu-store \
  //agents/emulated:vgpu-emu-device //agents/emulated:vgpu-emu-workload \
  //agents/mediated:vgpu-vfio-probe \
  //agents/forwarding/backend:vgpu-cl-backend \
  //agents/forwarding/guest:libvgpu-opencl.so \
  //agents/forwarding/samples:vgpu-cl-samples 2>&1 \
  | grep -E '^(INFO: Build|ERROR)' || true
bin="$(bazel info bazel-bin 2>/dev/null)"
vgpud="$bin/migrator/vgpud"
migrate="$bin/migrator/vgpu-migrate"
tool="$bin/state-codecs/tools/vgpu-image"
store_tool="$bin/store/tools/vgpu-store"
device="$bin/agents/emulated/vgpu-emu-device"
workload="$bin/agents/emulated/vgpu-emu-workload"
probe="$bin/agents/mediated/vgpu-vfio-probe"
clbackend="$bin/agents/forwarding/backend/vgpu-cl-backend"
cllib="$bin/agents/forwarding/guest/libvgpu-opencl.so"
clsamples="$bin/agents/forwarding/samples/vgpu-cl-samples"
for t in "$vgpud" "$migrate" "$tool" "$store_tool" "$device" "$workload" "$probe" \
    "$clbackend" "$clsamples"; do
  [ -x "$t" ] || { echo "demo: build failed ($t missing)" >&2; exit 1; }
done

work="$(mktemp -d /tmp/vgpu-demo.XXXXXX)"
pids=()
netns=0
tag="vd$$"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$netns" = 1 ]; then
    ip netns del "$tag-host1" 2>/dev/null || true
    ip netns del "$tag-host2" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step "two hosts: host1 and host2, each with vgpud, its own store, mutual TLS"
"$migrate" certs "$work/certs" host1 host2
if [ "$(id -u)" = 0 ] && ip netns list >/dev/null 2>&1; then
  netns=1
  ip netns add "$tag-host1"
  ip netns add "$tag-host2"
  ip link add "$tag-a" type veth peer name "$tag-b"
  ip link set "$tag-a" netns "$tag-host1"
  ip link set "$tag-b" netns "$tag-host2"
  ip -n "$tag-host1" addr add 10.79.0.1/24 dev "$tag-a"
  ip -n "$tag-host2" addr add 10.79.0.2/24 dev "$tag-b"
  for h in host1 host2; do
    ip -n "$tag-$h" link set lo up
  done
  ip -n "$tag-host1" link set "$tag-a" up
  ip -n "$tag-host2" link set "$tag-b" up
  addr1=10.79.0.1; addr2=10.79.0.2; port1=7480; port2=7480
  in1=(ip netns exec "$tag-host1"); in2=(ip netns exec "$tag-host2")
  echo "network namespaces $tag-host1 (10.79.0.1) and $tag-host2 (10.79.0.2), joined by a veth link"
else
  addr1=127.0.0.1; addr2=127.0.0.1; port1=17481; port2=17482
  in1=(); in2=()
  echo "not root: both hosts on loopback (ports $port1 and $port2)"
fi
start_host() {  # name addr port peer peer_addr peer_port ns-prefix...
  local name=$1 addr=$2 port=$3 peer=$4 peer_addr=$5 peer_port=$6
  shift 6
  mkdir -p "$work/$name"
  # Each host also has a reference mediated GPU: four REF-4C vGPU
  # instances whose guests keep their contexts busy (16 MiB/s of VRAM),
  # and an OpenCL forwarding backend (vgpu-cl-backend, started below).
  cat >"$work/$name/vgpud.json" <<JSON
{"mediated": {"reference": {"type": "REF-4C", "instances": 4, "vram": "64M",
                            "contexts": 4, "workload": "16M"}},
 "forwarding": {"control": "unix:$work/$name/clc.sock", "poll_ms": 500}}
JSON
  "$@" "$vgpud" --config "$work/$name/vgpud.json" --host "$name" --listen "$addr:$port" \
    --control "$work/$name/control.sock" --store "$work/$name/store" \
    --run-dir "$work/$name/run" --peer "$peer=$peer_addr:$peer_port" \
    --tls-dir "$work/certs" --device-binary "$device" \
    >"$work/$name/vgpud.log" 2>&1 &
  pids+=($!)
}
start_host host1 "$addr1" "$port1" host2 "$addr2" "$port2" "${in1[@]}"
start_host host2 "$addr2" "$port2" host1 "$addr1" "$port1" "${in2[@]}"
for h in host1 host2; do
  for _ in $(seq 200); do [ -S "$work/$h/control.sock" ] && break; sleep 0.05; done
  [ -S "$work/$h/control.sock" ] || { cat "$work/$h/vgpud.log"; exit 1; }
done
h1=("$migrate" --socket "$work/host1/control.sock")
h2=("$migrate" --socket "$work/host2/control.sock")
sed -n 1p "$work/host1/vgpud.log"
sed -n 1p "$work/host2/vgpud.log"

step "vm1 on host1: an emulated vGPU ($vram of VRAM) running the counter workload"
"$device" --socket "$work/vm1-gpu0.sock" --vram "$vram" --name vm1-gpu0 \
  >"$work/vm1-gpu0.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/vm1-gpu0.sock" ] && break; sleep 0.05; done
# The socket file appears at bind, a moment before the device listens.
for try in 1 2 3 4 5; do
  "${h1[@]}" register vm1 --device "emulation:$work/vm1-gpu0.sock" && break
  [ "$try" = 5 ] && exit 1
  sleep 0.2
done
# The guest increments a counter in every VRAM page, in order, at 8000
# pages (31 MiB) per second, and draws frames.
"$workload" --socket "$work/vm1-gpu0.sock" --pages-per-second 8000 \
  >"$work/workload-host1.log" 2>&1 &
wl=$!
sleep 2
"${h1[@]}" list

step "may vm1 move to host2? vgpu-migrate --check --to host2 vm1"
"${h1[@]}" --check --to host2 vm1

step "live migration: vgpu-migrate --to host2 vm1"
"${h1[@]}" --to host2 vm1
kill -9 "$wl" 2>/dev/null || true
wait "$wl" 2>/dev/null || true
echo "host1's workload, last progress line: $(tail -1 "$work/workload-host1.log")"

step "vm1 now runs on host2; host1 no longer has it"
"${h2[@]}" list
"${h1[@]}" list
endpoint=$("${h2[@]}" --json list | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["devices"][0]["endpoint"])')
echo "the workload carries on on host2 from the migrated counters (it checks the invariant first):"
"$workload" --socket "$endpoint" --duration 2 2>&1 | sed -n '1p;$p'

step "snapshot vm1 on host2 into host2's store, list, verify"
"${h2[@]}" snapshot vm1 --tag demo
"${h2[@]}" snapshots
"${h2[@]}" verify

step "mediated pass-through: what this host's kernel offers (vgpu-vfio-probe)"
"$probe" || true

step "vm2 on host1: two mediated vGPUs (reference GPU, type REF-4C), contexts running"
# Registering unused mdev UUIDs creates the instances, as libvirt's
# nodedev-create would on a real mdev GPU.
"${h1[@]}" register vm2 --device mediated:5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01 \
  --device mediated:5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a02
sleep 1
"${h1[@]}" list

step "vgpu-migrate --check --to host2 vm2 (both vGPUs; they stop together through VFIO's P2P states)"
"${h1[@]}" --check --to host2 vm2

step "live migration of the mediated vGPUs: vgpu-migrate --to host2 vm2"
"${h1[@]}" --to host2 vm2

step "vm2 runs on host2: stamps checked, context sequences carrying on"
"${h2[@]}" list
sleep 1
"${h2[@]}" --json list | python3 -c '
import json, sys
for vm in json.load(sys.stdin):
    if vm["name"] == "vm2":
        for i, d in enumerate(vm["devices"]):
            print("gpu%d %s: %s" % (i, d["endpoint"], d["health"]))'

step "API forwarding: vgpu-cl-backend on each host; vm3 runs an OpenCL program through libvgpu-opencl.so"
# Guests reach a backend over TCP on its host's address (a unix socket when
# not root). The program runs unmodified through the system's ICD loader.
if [ "$netns" = 1 ]; then
  cl1="tcp:$addr1:7400"; cl2="tcp:$addr2:7400"
else
  cl1="unix:$work/host1/cl.sock"; cl2="unix:$work/host2/cl.sock"
fi
"${in1[@]}" "$clbackend" --listen "$cl1" --control "unix:$work/host1/clc.sock" \
  --run-dir "$work/host1/cl" --memory-limit 1G >"$work/host1/cl.log" 2>&1 &
pids+=($!)
"${in2[@]}" "$clbackend" --listen "$cl2" --control "unix:$work/host2/clc.sock" \
  --run-dir "$work/host2/cl" --memory-limit 1G >"$work/host2/cl.log" 2>&1 &
pids+=($!)
sleep 0.5
head -1 "$work/host1/cl.log"; head -1 "$work/host2/cl.log"
agents/forwarding/guest/install_icd.sh "$work/icd" "$cllib" >/dev/null
native="$(env -u OCL_ICD_VENDORS "$clsamples" vector_add reduction mandelbrot 2>/dev/null)"
"${in1[@]}" env OCL_ICD_VENDORS="$work/icd" VGPU_CL_BACKEND="$cl1" VGPU_VM=vm3 \
  "$clsamples" --pause-at 2 --pause-file "$work/vm3.go" vector_add reduction mandelbrot \
  >"$work/vm3.out" 2>"$work/vm3.err" &
app=$!
for _ in $(seq 300); do grep -q PAUSED "$work/vm3.out" && break; sleep 0.1; done
echo "vm3's program: $(grep PAUSED "$work/vm3.out") (paused in the middle, its buffers and kernels live on host1)"
"$clbackend" sessions --control "unix:$work/host1/clc.sock"
sleep 1
"${h1[@]}" list

step "vgpu-migrate --check --to host2 vm3, then live-migrate the running OpenCL session"
"${h1[@]}" --check --to host2 vm3
"${h1[@]}" --to host2 vm3
echo "host2's backend now serves the session; host1's has none:"
"$clbackend" sessions --control "unix:$work/host2/clc.sock"
"$clbackend" sessions --control "unix:$work/host1/clc.sock"

step "vm3's program carries on, reconnected to host2 by its library, and ends as it does natively"
while kill -0 "$app" 2>/dev/null; do
  [ -e "$work/vm3.go" ] || touch "$work/vm3.go"
  sleep 0.05
done
grep SAMPLE "$work/vm3.out"
if [ "$(grep SAMPLE "$work/vm3.out" | awk '{print $2, $4}')" = \
     "$(echo "$native" | grep SAMPLE | awk '{print $2, $4}')" ]; then
  echo "digests identical to the native run on PoCL"
else
  echo "digests DIFFER from the native run:"; echo "$native"
fi

step "the formats underneath: one vGPU's state as an image file"
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
echo "Machine-readable forms: add --json. Help: vgpu-migrate --help, vgpud --help, $tool --help"
