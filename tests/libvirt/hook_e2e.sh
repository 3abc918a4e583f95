#!/usr/bin/env bash
# hook_e2e.sh — vgpu-migrate's libvirt hook under a real libvirtd with a
# real guest: vgpud (with the reference mediated GPU) and libvirtd (private
# mount namespace, as in run_domain.sh) on this machine, the hook installed
# with `vgpu-libvirt-hook install`, and a domain whose metadata names one
# mediated vGPU.
#
#   1. virsh start: the hook's `prepare begin` registers the VM with vgpud,
#      which creates the vGPU instance; its guest workload runs.
#   2. virsh save: `stopped end` snapshots the vGPU state into vgpud's store
#      (tag libvirt-stopped); `release end` makes vgpud forget the VM.
#   3. virsh restore: `restore begin` checks the host, `prepare begin`
#      restores the vGPU state from that snapshot; the guest's counter and
#      the vGPU's context sequences both carry on.
#   4. vgpud restarted with another vGPU type (REF-8C), same store: virsh
#      restore is refused by the hook (vendor-type), the domain stays off.
#
# Usage (root; run from the repository root after building):
#   bazel build //migrator:vgpud //migrator:vgpu-migrate //migrator/hook:vgpu-libvirt-hook
#   tests/libvirt/hook_e2e.sh
# Prints each step with its duration and ends with PASS, or names the step
# that failed. No /dev/kvm here: the guest runs under TCG and says so.
set -euo pipefail
ME=hook_e2e.sh
# shellcheck source=run_domain.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run_domain.sh"
# shellcheck source=vgpu_checks.sh
source "$HERE/vgpu_checks.sh"

BIN=${BIN:-$(bazel info bazel-bin 2>/dev/null)}
VGPUD=$BIN/migrator/vgpud
CLI=$BIN/migrator/vgpu-migrate
HOOK=$BIN/migrator/hook/vgpu-libvirt-hook
UUID=5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01
VGPUD_PID=""

start_vgpud() {  # TYPE
  # vgpud also watches the libvirtd (read-only), as a host would run it.
  cat > "$WORK/vgpud.json" <<EOF
{"mediated": {"reference": {"type": "$1", "instances": 4, "vram": "32M",
                            "contexts": 4, "workload": "4M"}},
 "libvirt": {"uri": "$(lv_uri "$WORK/host")", "poll_ms": 300}}
EOF
  "$VGPUD" --config "$WORK/vgpud.json" --host h1 --listen 127.0.0.1:17691 \
    --control "$WORK/vgpud.sock" --store "$WORK/store" --run-dir "$WORK/run" \
    --insecure >>"$WORK/vgpud.log" 2>&1 &
  VGPUD_PID=$!
  for _ in $(seq 1 100); do
    "$CLI" --socket "$WORK/vgpud.sock" list >/dev/null 2>&1 && { echo "vgpud up ($1)"; return 0; }
    sleep 0.1
  done
  echo "vgpud did not come up"; tail -5 "$WORK/vgpud.log"; return 1
}
stop_vgpud() {
  [[ -n $VGPUD_PID ]] && kill "$VGPUD_PID" 2>/dev/null && wait "$VGPUD_PID" 2>/dev/null || true
  VGPUD_PID=""
  echo "vgpud stopped"
}
cli() { "$CLI" --socket "$WORK/vgpud.sock" "$@"; }
# Checks, run by `step` in this shell.
H1="" H2=""
vm_runs_with_intact_stamps() { vgpu_wait_intact "$WORK/vgpud.sock" "$1" "$2"; }
saved_as_libvirt_stopped() { cli snapshots "$1" | grep libvirt-stopped; }
vgpud_forgot() { ! cli list | grep -q "^$1 "; echo "vgpud no longer lists $1"; }
sequences_carry_on() {
  echo "saved ${H1##*sequences } -> restored ${H2##*sequences }"
  (( $(seq_of "$H2") >= $(seq_of "$H1") ))
}
same_uuid() {  # VM
  local ep; ep=$(vgpu_device "$WORK/vgpud.sock" "$1" endpoint)
  echo "vgpud's instance $ep; the domain's $UUID"
  [[ $ep == "$UUID" ]]
}
restart_vgpud_as() { stop_vgpud; start_vgpud "$1"; }
restore_refused() {  # URI FILE
  local out
  if out=$(virsh -q -c "$1" restore "$2" 2>&1); then
    echo "restore succeeded: $out"; return 1
  fi
  echo "$out" | tail -n 2
  grep -q 'vendor-type' <<<"$out"
}
# vgpud's libvirt inventory, not the hook: forget the VM, and the next pass
# over libvirt's running domains registers it again from its metadata.
inventory_finds() {  # VM
  cli unregister "$1"
  for _ in $(seq 1 50); do
    if grep -q "libvirt: vm=$1 registered from its domain" "$WORK/vgpud.log"; then
      grep "libvirt: vm=$1 registered from its domain" "$WORK/vgpud.log" | tail -n 1 | sed 's/^[^ ]* //'
      return 0
    fi
    sleep 0.1
  done
  echo "vgpud's libvirt inventory did not register $1"; return 1
}
domain_off() { virsh -q -c "$1" domstate "$2" | grep -x 'shut off'; }

e2e_cleanup() {
  local rc=$?
  set +e
  local d
  for d in "${LV_DIRS[@]}"; do lv_stop "$d"; done
  lv_remove_mountpoints
  stop_vgpud >/dev/null
  if [[ -n ${KEEP_WORK:-} || $rc -ne 0 ]]; then
    say "kept $WORK (vgpud.log, hook.log, console.log)"
  else
    rm -rf "$WORK"
  fi
  [[ $rc -eq 0 ]] || echo "$ME: exit $rc (cleaned up)" >&2
}

e2e() {
  [[ $EUID -eq 0 ]] || { echo "$ME: must run as root" >&2; exit 1; }
  for b in "$VGPUD" "$CLI" "$HOOK"; do
    [[ -x $b ]] || { echo "$ME: $b missing: bazel build //migrator:vgpud //migrator:vgpu-migrate //migrator/hook:vgpu-libvirt-hook" >&2; exit 1; }
  done
  for c in libvirtd virsh qemu-system-x86_64 unshare; do
    command -v $c >/dev/null || { echo "$ME: $c not found (run tests/libvirt/setup_packages.sh)" >&2; exit 1; }
  done
  local t_all; t_all=$(now)
  WORK=$(mktemp -d /tmp/vgpu-hook-e2e.XXXXXX)
  GUEST_DIR=${GUEST_DIR:-/var/tmp/vgpu-migrate-guest}
  local D=$WORK/host DOM=vgpu-e2e CON=$WORK/console.log URI
  trap 'e2e_cleanup' EXIT
  say "work dir $WORK; /dev/kvm $([[ -c /dev/kvm ]] && echo present || echo ABSENT)"

  step "guest: make_guest.sh" "$HERE/make_guest.sh" "$GUEST_DIR"
  step "vgpud (reference GPU REF-4C)" start_vgpud REF-4C
  step "libvirt root + probe hook" lv_prepare "$D" 5b0f1a2c-0000-4000-8000-00000000e2e1
  step "probe hook (call log)" lv_install_probe_hook "$D" "$WORK/hook.log"
  step "vgpu-libvirt-hook install" "$HOOK" install \
    --hooks-dir "$D/root/etc/libvirt/hooks" --socket "$WORK/vgpud.sock" \
    --state-dir "$WORK/hook-state" --timeout 30
  step "libvirtd -d (start)" lv_start "$D"
  URI=$(lv_uri "$D")
  step "domain type (kvm, else qemu)" lv_domain_type "$D"
  domain_xml "$DOM" "$LV_TYPE" "$GUEST_DIR" "$CON" 128 > "$WORK/domain.xml"
  vs() { virsh -q -c "$URI" "$@"; }

  step "virsh define" vs define "$WORK/domain.xml"
  step "virsh start (hook: prepare begin)" vs start "$DOM"
  step "boot: wait 'vgpu-guest: up'" wait_console "$CON" 'vgpu-guest: up' 60
  step "vgpud registered the VM" vm_runs_with_intact_stamps "$DOM" H1
  step "vgpud's libvirt inventory finds it" inventory_finds "$DOM"
  step "vGPU runs again, stamps intact" vm_runs_with_intact_stamps "$DOM" H1
  step "wait for tick 2" wait_console "$CON" 'vgpu-guest: tick 2 ' 30
  local before lines; before=$(last_tick "$CON"); lines=$(wc -l < "$CON")

  step "virsh save (hook: stopped, release)" vs save "$DOM" "$WORK/save.img"
  step "vGPU state saved (libvirt-stopped)" saved_as_libvirt_stopped "$DOM"
  step "vgpud forgot the VM" vgpud_forgot "$DOM"

  step "virsh restore (hook: restore, prepare)" vs restore "$WORK/save.img"
  step "guest resumed (no reboot)" guest_resumed "$CON" "$lines" "$before"
  step "vGPU restored, stamps intact" vm_runs_with_intact_stamps "$DOM" H2
  step "vGPU sequences carry on" sequences_carry_on
  step "restored under the domain's mdev UUID" same_uuid "$DOM"

  step "virsh save again" vs save "$DOM" "$WORK/save2.img"
  step "vgpud restarted as REF-8C host" restart_vgpud_as REF-8C
  step "virsh restore is refused" restore_refused "$URI" "$WORK/save2.img"
  say "libvirt said: $(grep -oE 'vgpu-libvirt-hook: [^|]*' "$WORK/step.out" | head -n 1 | cut -c1-300)"
  step "domain stays off" domain_off "$URI" "$DOM"

  echo
  say "hook calls (probe log):"
  sed 's/^/     /' "$WORK/hook.log"
  say "total $(since "$t_all")s"
  say "PASS"
}

e2e "$@"
