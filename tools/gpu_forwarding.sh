#!/usr/bin/env bash
# OpenCL API forwarding on a GPU host (NVIDIA's OpenCL), where this
# project's build environment is absent: `package` collects the built
# binaries and every library they load (beyond glibc and libstdc++) into a
# folder; `run` (on the GPU host, from that folder's parent) starts
# vgpu-cl-backend on the host's NVIDIA platform only and checks, against
# native runs on the same platform:
#   - clinfo through libvgpu-opencl.so equals clinfo natively, apart from
#     the platform's name;
#   - every fidelity sample gives the native digests;
#   - a session checkpointed, killed and restored in the middle of a run
#     finishes with the native digests;
#   - a session checkpointed on PoCL (the CPU) mid-run and restored onto a
#     backend on the GPU at the same address finishes there.
# Prints "GPU <check> PASS|FAIL" lines; results go to $OUT (or ./gpu-out).
#
#   tools/gpu_forwarding.sh package DIR     # here, after bazel build
#   tools/gpu_forwarding.sh run DIR         # there
set -uo pipefail

package() {
  local dir=$1 bin
  bin="$(bazel info bazel-bin 2>/dev/null)"
  rm -rf "$dir"; mkdir -p "$dir/bin" "$dir/lib"
  cp -L "$bin/agents/forwarding/backend/vgpu-cl-backend" \
        "$bin/agents/forwarding/samples/vgpu-cl-samples" /usr/bin/clinfo "$dir/bin/"
  cp -L "$bin/agents/forwarding/guest/libvgpu-opencl.so" "$dir/lib/"
  cp -L tools/gpu_forwarding.sh "$dir/"
  # Every library they load, except the C runtime the host has anyway.
  for f in "$dir"/bin/* "$dir/lib/libvgpu-opencl.so"; do
    ldd "$f" | awk '/=>/ {print $3}'
  done | sort -u | grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libgcc_s|libstdc\+\+)\.so' |
    while read -r lib; do [ -f "$lib" ] && cp -L "$lib" "$dir/lib/"; done
  du -sh "$dir"
}

# "name digest" per sample, or "name FAILED <where>" for one that failed.
digests() { grep '^SAMPLE' "$1" | awk '{ if ($3 == "digest") print $2, $4; else print $2, $3, $4, $5 }'; }
finished() { grep -c '^SAMPLE [a-z_]* digest' "$1"; }

check() {  # NAME CONDITION-EXIT-STATUS
  if [ "$2" = 0 ]; then echo "GPU $1 PASS"; else echo "GPU $1 FAIL"; fail=1; fi
}

run() {
  local dir; dir=$(cd "$1" && pwd)
  local out=${OUT:-$PWD/gpu-out} w
  mkdir -p "$out"; w=$(mktemp -d /tmp/gpufwd.XXXXXX)
  export LD_LIBRARY_PATH="$dir/lib"
  fail=0
  nvidia-smi -L 2>&1 | head -2
  mkdir -p "$w/nv" "$w/icd"
  grep -il nvidia /etc/OpenCL/vendors/*.icd 2>/dev/null | while read -r f; do cp "$f" "$w/nv/"; done
  if ! ls "$w/nv"/*.icd >/dev/null 2>&1; then
    # The driver's OpenCL library without its ICD file: name it ourselves.
    local lib
    lib=$( (ldconfig -p | awk '/libnvidia-opencl.so.1/ {print $NF}';
            find / -xdev -name 'libnvidia-opencl.so.1' 2>/dev/null) | head -1)
    [ -n "$lib" ] && echo "$lib" > "$w/nv/nvidia.icd" && echo "  NVIDIA OpenCL: $lib (no ICD file; made one)"
  fi
  if ! ls "$w/nv"/*.icd >/dev/null 2>&1; then
    echo "GPU setup FAIL: no NVIDIA OpenCL ICD in /etc/OpenCL/vendors"; ls /etc/OpenCL/vendors; return 1
  fi
  echo "$dir/lib/libvgpu-opencl.so" > "$w/icd/vgpu.icd"
  OCL_ICD_VENDORS="$w/nv" "$dir/bin/vgpu-cl-backend" --listen "unix:$w/cl.sock" \
    --control "unix:$w/clc.sock" --run-dir "$w/run" >"$out/backend.log" 2>&1 &
  local backend=$!
  sleep 1
  local nat=(env OCL_ICD_VENDORS="$w/nv")
  local fwd=(env OCL_ICD_VENDORS="$w/icd" VGPU_CL_BACKEND="unix:$w/cl.sock")

  "${nat[@]}" "$dir/bin/clinfo" >"$out/clinfo-native.txt" 2>&1
  "${fwd[@]}" "$dir/bin/clinfo" >"$out/clinfo-forwarded.txt" 2>&1
  local pname; pname=$(sed -n 's/^  Platform Name *//p' "$out/clinfo-native.txt" | head -1)
  # A device whose LUID is not valid reports whatever bytes are in the
  # field (NVIDIA: different ones in every process): not compared then.
  local luid=()
  grep -qE 'Valid Device LUID +No' "$out/clinfo-native.txt" && luid=(-e '/^  Device LUID /d')
  sed -e "s/vgpu-opencl on $pname/<platform>/g" "${luid[@]}" "$out/clinfo-forwarded.txt" >"$w/a"
  sed -e "s/$pname/<platform>/g" "${luid[@]}" "$out/clinfo-native.txt" >"$w/b"
  diff "$w/b" "$w/a" >"$out/clinfo.diff"; check clinfo $?
  echo "  platform: $pname; device: $(sed -n 's/^  Device Name *//p' "$out/clinfo-native.txt" | head -1)"

  "${nat[@]}" "$dir/bin/vgpu-cl-samples" all >"$out/native.txt" 2>"$out/native.err"
  local t0=$SECONDS
  "${fwd[@]}" VGPU_VM=gpu-all "$dir/bin/vgpu-cl-samples" all >"$out/forwarded.txt" 2>"$out/forwarded.err"
  echo "  forwarded run of all samples: $((SECONDS - t0)) s"
  diff <(digests "$out/native.txt") <(digests "$out/forwarded.txt") >"$out/samples.diff"
  check samples $?
  # Samples that fail natively on this platform (they assume behaviours of
  # PoCL that NVIDIA's OpenCL does not share) must fail the same way
  # forwarded; the check above compares that. Say how many finished.
  echo "  samples that ran to their end: native $(finished "$out/native.txt"), forwarded $(finished "$out/forwarded.txt") of 9"
  grep '^SAMPLE' "$out/native.txt" | grep -v ' digest ' | sed 's/^/  native: /'

  # Mid-run: checkpoint, kill the worker, restore, carry on.
  local mid=(vector_add reduction image_ops sub_buffers multi_queue mandelbrot)
  "${nat[@]}" "$dir/bin/vgpu-cl-samples" "${mid[@]}" >"$out/mid-native.txt" 2>/dev/null
  "${fwd[@]}" VGPU_VM=gpu-mid VGPU_CL_RECONNECT_MS=30000 "$dir/bin/vgpu-cl-samples" \
    --pause-at 2 --pause-file "$w/go" "${mid[@]}" >"$out/mid.txt" 2>"$out/mid.err" &
  local app=$!
  for _ in $(seq 300); do grep -q PAUSED "$out/mid.txt" && break; sleep 0.1; done
  "$dir/bin/vgpu-cl-backend" sessions --control "unix:$w/clc.sock" --json >"$w/s.json"
  local ctl pid
  ctl=$(python3 -c "import json,sys; print([json.loads(l) for l in open('$w/s.json')][-1]['control'])")
  pid=$(python3 -c "import json,sys; print([json.loads(l) for l in open('$w/s.json')][-1]['pid'])")
  "$dir/bin/vgpu-cl-backend" checkpoint "$ctl" "$w/s.vgi" | tee "$out/checkpoint.txt"
  kill -9 "$pid"; sleep 0.3
  "$dir/bin/vgpu-cl-backend" restore "$w/s.vgi" --control "unix:$w/clc.sock" | tee "$out/restore.txt"
  while kill -0 "$app" 2>/dev/null; do [ -e "$w/go" ] || touch "$w/go"; sleep 0.05; done
  diff <(digests "$out/mid-native.txt") <(digests "$out/mid.txt") >"$out/mid.diff"
  check checkpoint_restore_midrun $?
  [ "$(finished "$out/mid.txt")" = "$(finished "$out/mid-native.txt")" ]; check midrun_complete $?
  echo "  mid-run samples that ran to their end: $(finished "$out/mid.txt") of 6"
  kill "$backend" 2>/dev/null
  sleep 0.5

  # Across devices: the session starts on PoCL (the CPU), is checkpointed
  # mid-run, and the host's backend is replaced by one on the GPU at the
  # same address; the restore replays the log there (programs from their
  # source) and the program finishes on the GPU. Integer results must match
  # the native runs; float results may differ by device rounding.
  if ls /etc/OpenCL/vendors/pocl.icd >/dev/null 2>&1; then
    mkdir -p "$w/pocl"; cp /etc/OpenCL/vendors/pocl.icd "$w/pocl/"
    OCL_ICD_VENDORS="$w/pocl" "$dir/bin/vgpu-cl-backend" --listen "unix:$w/x.sock" \
      --control "unix:$w/xc.sock" --run-dir "$w/xrun" >"$out/x-backend-cpu.log" 2>&1 &
    local cpu=$!; sleep 1
    local x=(vector_add reduction multi_queue)
    env OCL_ICD_VENDORS="$w/pocl" "$dir/bin/vgpu-cl-samples" "${x[@]}" >"$out/x-native-cpu.txt" 2>/dev/null
    "${nat[@]}" "$dir/bin/vgpu-cl-samples" "${x[@]}" >"$out/x-native-gpu.txt" 2>/dev/null
    rm -f "$w/go"
    env OCL_ICD_VENDORS="$w/icd" VGPU_CL_BACKEND="unix:$w/x.sock" VGPU_VM=gpu-x \
      VGPU_CL_RECONNECT_MS=30000 "$dir/bin/vgpu-cl-samples" --pause-at 2 \
      --pause-file "$w/go" "${x[@]}" >"$out/x.txt" 2>"$out/x.err" &
    app=$!
    for _ in $(seq 300); do grep -q PAUSED "$out/x.txt" && break; sleep 0.1; done
    "$dir/bin/vgpu-cl-backend" sessions --control "unix:$w/xc.sock" --json >"$w/x.json"
    ctl=$(python3 -c "import json; print([json.loads(l) for l in open('$w/x.json')][-1]['control'])")
    echo "  on $(python3 -c "import json; print([json.loads(l) for l in open('$w/x.json')][-1]['device'])")"
    "$dir/bin/vgpu-cl-backend" checkpoint "$ctl" "$w/x.vgi" | tee "$out/x-checkpoint.txt"
    kill -9 "$cpu"; pkill -9 -f "xrun/s" ; sleep 0.5
    OCL_ICD_VENDORS="$w/nv" "$dir/bin/vgpu-cl-backend" --listen "unix:$w/x.sock" \
      --control "unix:$w/xc.sock" --run-dir "$w/xrun2" >"$out/x-backend-gpu.log" 2>&1 &
    local gpu=$!; sleep 1
    "$dir/bin/vgpu-cl-backend" restore "$w/x.vgi" --control "unix:$w/xc.sock" | tee "$out/x-restore.txt"
    "$dir/bin/vgpu-cl-backend" sessions --control "unix:$w/xc.sock" | tail -n +2 | sed 's/^/  now: /'
    while kill -0 "$app" 2>/dev/null; do [ -e "$w/go" ] || touch "$w/go"; sleep 0.05; done
    grep '^SAMPLE' "$out/x.txt" | cut -c1-110 | sed 's/^/  cpu->gpu: /'
    for f in x-native-cpu x-native-gpu; do
      echo "  same digests as $f: $(comm -12 <(digests "$out/$f.txt" | sort) <(digests "$out/x.txt" | sort) | awk '{print $1}' | tr '\n' ' ')"
    done
    [ "$(finished "$out/x.txt")" = 3 ]; check cpu_to_gpu_restore_finishes $?
    kill "$gpu" 2>/dev/null
  fi
  tar czf "$out/all.tgz" -C "$out" . 2>/dev/null
  return $fail
}

case "${1:-}" in
  package) package "${2:?folder}" ;;
  run) run "${2:?folder}" ;;
  *) echo "usage: $0 package DIR | run DIR" >&2; exit 2 ;;
esac
