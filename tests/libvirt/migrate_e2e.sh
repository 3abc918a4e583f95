#!/usr/bin/env bash
# migrate_e2e.sh — a live migration of a guest with a mediated vGPU between
# two hosts on this machine, each a network namespace with its own vgpud
# (reference mediated GPU, mutual TLS between the two) and its own libvirtd
# with vgpu-migrate's hook installed:
#
#   1. virsh start on host A: the hook registers the vGPU with A's vgpud;
#      `vgpu-migrate annotate` writes its descriptor into the domain's
#      metadata, so that B's hook checks it before accepting the guest.
#   2. vgpu-migrate --to hostB: the vGPU state moves to B's vgpud (pre-copy
#      while the guest runs, then stop-copy).
#   3. virsh migrate --live A -> B: on B the hook's migrate begin rewrites
#      the domain's mdev UUID to the instance that took the state there and
#      prepare begin finds the VM already registered; on A the hook's
#      stopped end finds it gone and saves nothing.
#   4. On B the guest's counter goes on without a reboot and the vGPU runs
#      with its stamps intact and its context sequences rising; A has
#      neither.
#
# libvirt calls no hook on the source when its migration starts or pauses
# the guest (tests/libvirt/README.md), so the vGPU moves first, by
# vgpu-migrate, and is stopped from its stop-copy until QEMU resumes on B.
#
# Usage (root; from the repository root after building vgpud, vgpu-migrate
# and vgpu-libvirt-hook): tests/libvirt/migrate_e2e.sh
set -euo pipefail
ME=migrate_e2e.sh
HERE_E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=two_hosts.sh
source "$HERE_E2E/two_hosts.sh"
# shellcheck source=vgpu_checks.sh
source "$HERE_E2E/vgpu_checks.sh"
ME=migrate_e2e.sh  # two_hosts.sh set its own

BIN=${BIN:-$(bazel info bazel-bin 2>/dev/null)}
VGPUD=$BIN/migrator/vgpud
CLI=$BIN/migrator/vgpu-migrate
HOOK=$BIN/migrator/hook/vgpu-libvirt-hook
DOM=vgpu-mig
VGPUD_PIDS=()

start_vgpud() {  # NAME NS IP PEER PEER_IP
  local name=$1 ns=$2 ip=$3 peer=$4 pip=$5
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/vgpud.json" <<JSON
{"mediated": {"reference": {"type": "REF-4C", "instances": 4, "vram": "32M",
                            "contexts": 4, "workload": "4M"}}}
JSON
  ip netns exec "$ns" "$VGPUD" --config "$WORK/$name/vgpud.json" --host "$name" \
    --listen "$ip:7480" --peer "$peer=$pip:7480" --tls-dir "$WORK/certs" \
    --control "$WORK/$name/control.sock" --store "$WORK/$name/store" \
    --run-dir "$WORK/$name/run" >"$WORK/$name/vgpud.log" 2>&1 &
  VGPUD_PIDS+=($!)
  for _ in $(seq 1 100); do
    "$CLI" --socket "$WORK/$name/control.sock" list >/dev/null 2>&1 && { echo "vgpud $name up on $ip"; return 0; }
    sleep 0.1
  done
  echo "vgpud $name did not come up"; tail -5 "$WORK/$name/vgpud.log"; return 1
}
cli_at() { local h=$1; shift; "$CLI" --socket "$WORK/$h/control.sock" "$@"; }
health_at() { vgpu_device "$WORK/$1/control.sock" "$DOM" health; }  # HOST
H_A="" H_B=""
runs_on() {  # HOST VAR
  echo -n "$1: "
  vgpu_wait_intact "$WORK/$1/control.sock" "$DOM" "$2"
}
# B's domain names B's own vGPU instance (the hook rewrote the UUID).
domain_names_local_vgpu() {  # URI
  local ep
  ep=$(vgpu_device "$WORK/hostB/control.sock" "$DOM" endpoint)
  echo "hostB's instance $ep; source's $UUID_SRC"
  [[ $ep != "$UUID_SRC" ]] && virsh -q -c "$1" dumpxml "$DOM" | grep -q "endpoint=\"$ep\""
}
UUID_SRC=5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01
gone_from() { [[ -z $(health_at "$1") ]] && echo "$1 no longer has $DOM"; }
no_snapshot_on() { ! cli_at "$1" snapshots "$DOM" | grep -q libvirt-stopped; echo "no libvirt-stopped snapshot on $1"; }
still_rising() {
  local h; sleep 1; h=$(health_at hostB)
  echo "hostB after the move: ${H_B##*sequences } -> ${h##*sequences }"
  (( $(seq_of "$h") > $(seq_of "$H_B") ))
}
libvirt_migrate() { migrate $NSA "$WORK/hA" $IPB --live --persistent --undefinesource; cat "$MIG_OUT"; }

mig_cleanup() {
  local rc=$?
  set +e
  local d p
  for d in "${LV_DIRS[@]}"; do lv_stop "$d"; done
  for p in "${VGPUD_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  net_down
  lv_remove_mountpoints
  if [[ -n ${KEEP_WORK:-} || $rc -ne 0 ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  [[ $rc -eq 0 ]] || echo "$ME: exit $rc (cleaned up)" >&2
}

mig_main() {
  [[ $EUID -eq 0 ]] || { echo "$ME: must run as root" >&2; exit 1; }
  local t_all; t_all=$(now)
  WORK=$(mktemp -d /tmp/vgpu-mig-e2e.XXXXXX)
  GUEST_DIR=${GUEST_DIR:-/var/tmp/vgpu-migrate-guest}
  local A=$WORK/hA B=$WORK/hB CON=$WORK/console.log
  trap 'mig_cleanup' EXIT
  say "work dir $WORK; /dev/kvm $([[ -c /dev/kvm ]] && echo present || echo ABSENT)"

  step "guest: make_guest.sh" "$HERE/make_guest.sh" "$GUEST_DIR"
  step "netns + veth ($IPA <-> $IPB)" net_up
  step "TLS: vgpu-migrate certs" "$CLI" certs "$WORK/certs" hostA hostB
  step "vgpud on hostA" start_vgpud hostA $NSA $IPA hostB $IPB
  step "vgpud on hostB" start_vgpud hostB $NSB $IPB hostA $IPA
  step "libvirt root A" lv_prepare "$A" "$UUIDA" "${TCP_CONF[@]}"
  step "libvirt root B" lv_prepare "$B" "$UUIDB" "${TCP_CONF[@]}"
  step "probe hook on A" lv_install_probe_hook "$A" "$WORK/hookA.log"
  step "probe hook on B" lv_install_probe_hook "$B" "$WORK/hookB.log"
  step "vgpu-libvirt-hook on A" "$HOOK" install --hooks-dir "$A/root/etc/libvirt/hooks" \
    --socket "$WORK/hostA/control.sock" --state-dir "$WORK/hookstateA" --timeout 60
  step "vgpu-libvirt-hook on B" "$HOOK" install --hooks-dir "$B/root/etc/libvirt/hooks" \
    --socket "$WORK/hostB/control.sock" --state-dir "$WORK/hookstateB" --timeout 60
  step "libvirtd -d --listen in $NSA" lv_start "$A" $NSA --listen
  step "libvirtd -d --listen in $NSB" lv_start "$B" $NSB --listen
  step "domain type (kvm, else qemu)" lv_domain_type "$A"
  domain_xml "$DOM" "$LV_TYPE" "$GUEST_DIR" "$CON" 128 > "$WORK/domain.xml"
  local UA; UA=$(lv_uri "$A")
  step "define + start on A (hook registers)" bash -c "virsh -q -c '$UA' define '$WORK/domain.xml' && virsh -q -c '$UA' start $DOM"
  step "boot: wait 'vgpu-guest: up'" wait_console "$CON" 'vgpu-guest: up' 60
  step "wait for tick 2" wait_console "$CON" 'vgpu-guest: tick 2 ' 30
  step "vGPU runs on hostA" runs_on hostA H_A

  step "vgpu-migrate annotate (descriptors)" cli_at hostA annotate "$DOM" --libvirt-uri "$UA"
  step "vgpu-migrate --to hostB $DOM" cli_at hostA --to hostB "$DOM"
  step "vGPU runs on hostB" runs_on hostB H_B
  local before lines; before=$(last_tick "$CON"); lines=$(wc -l < "$CON")
  step "virsh migrate --live A -> B" libvirt_migrate
  step "guest resumed on B (no reboot)" guest_resumed "$CON" "$lines" "$before"
  step "domain runs on B" bash -c "virsh -q -c '$(lv_uri "$B")' domstate $DOM | grep -x running"
  step "B's domain names B's vGPU (hook)" domain_names_local_vgpu "$(lv_uri "$B")"
  step "descriptors travelled in the metadata" bash -c "virsh -q -c '$(lv_uri "$B")' dumpxml $DOM | grep -c '<vgpu:descriptor>'"
  step "vGPU still runs on hostB" runs_on hostB H_B
  step "its contexts keep going" still_rising
  step "hostA has no vGPU left" gone_from hostA
  step "hostA saved nothing on stop" no_snapshot_on hostA

  echo
  say "hook calls, both hosts in time order:"
  merged 0 0
  say "total $(since "$t_all")s"
  say "PASS"
}

mig_main "$@"
