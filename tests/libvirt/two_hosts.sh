#!/usr/bin/env bash
# two_hosts.sh — two libvirtd "hosts" on one machine and `virsh migrate --live`
# between them.
#
#   netns vgpu-hA (10.77.0.1/24) <-- veth --> netns vgpu-hB (10.77.0.2/24)
#
# Each host is a libvirtd -d --listen in its own network namespace AND its own
# private mount namespace (same helpers as run_domain.sh: its own
# /etc/libvirt, /run/libvirt, /var/lib/libvirt, ... bind-mounted from
# $WORK/hA or $WORK/hB), with its own host_uuid, listen_tcp=1, listen_tls=0,
# auth_tcp="none" (test only!), and the probe hook in its qemu.d/.
#
# Sequence: define+start the guest on A; wait for "vgpu-guest: up";
#   1. A -> B  `virsh migrate --live` driven by the client (virsh in netns A,
#              source via A's unix socket, destination qemu+tcp://10.77.0.2/system)
#   2. B -> A  `virsh migrate --live --p2p` (B's libvirtd itself connects to
#              qemu+tcp://10.77.0.1/system)
# after each: the tick counter continues without a reboot, the metadata is in
# the destination's dumpxml, and the hook calls on both sides are printed.
# Every migration passes --migrateuri tcp://<dest-ip>: both hosts share one
# hostname, which libvirt would otherwise hand out as the migration address.
#
# Environment: as run_domain.sh (GUEST_DIR, DOMAIN_TYPE, MEM_MIB, KEEP_WORK).
set -euo pipefail
ME=two_hosts.sh
# shellcheck source=run_domain.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run_domain.sh"

NSA=vgpu-hA NSB=vgpu-hB IPA=10.77.0.1 IPB=10.77.0.2
UUIDA=5b0f1a2c-0000-4000-8000-0000000000a1
UUIDB=5b0f1a2c-0000-4000-8000-0000000000b2
# Negative checks (each makes the first migration fail; the error is printed):
#   SAME_UUID=1      both hosts get host A's host_uuid
#   NO_MIGRATEURI=1  no --migrateuri (libvirt picks the destination hostname)
[[ -n ${SAME_UUID:-} ]] && UUIDB=$UUIDA
CREATED_NS=()

net_up() {
  local ns
  for ns in $NSA $NSB; do
    if ip netns list | grep -qw "$ns"; then echo "netns $ns already exists (stale run?)"; return 1; fi
  done
  ip netns add $NSA; CREATED_NS+=("$NSA")
  ip netns add $NSB; CREATED_NS+=("$NSB")
  ip link add vgpu-vA netns $NSA type veth peer name vgpu-vB netns $NSB
  ip -n $NSA addr add $IPA/24 dev vgpu-vA
  ip -n $NSB addr add $IPB/24 dev vgpu-vB
  for ns in $NSA $NSB; do ip -n "$ns" link set lo up; done
  ip -n $NSA link set vgpu-vA up
  ip -n $NSB link set vgpu-vB up
  ip netns exec $NSA busybox ping -c 1 -W 2 $IPB | grep -E 'bytes from'
}

net_down() {
  local ns
  for ns in "${CREATED_NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  CREATED_NS=()
}

TCP_CONF=('listen_tls = 0' 'listen_tcp = 1' 'auth_tcp = "none"' 'tcp_port = "16509"')

# tick_after LOG N TIMEOUT: waits for tick N+1 or later.
tick_after() { wait_console "$1" "vgpu-guest: tick $(($2 + 1)) " "$3"; }

# show_hooks LABEL LOG FROM: prints the hook lines after line FROM.
show_hooks() {
  local label=$1 log=$2 from=$3 to
  to=$(wc -l < "$log")
  echo "  -- $label"
  if ((to > from)); then sed -n "$((from + 1)),${to}p" "$log" | sed 's/^/     /'; else echo "     (no hook calls)"; fi
}

# merged FROM_A FROM_B: both hosts' new hook lines in time order.
merged() {
  echo "  -- both hosts, in time order"
  { sed -n "$(($1 + 1)),\$p" "$WORK/hookA.log" | sed 's/^\([^ ]*\) [^ ]* /\1 A: /'
    sed -n "$(($2 + 1)),\$p" "$WORK/hookB.log" | sed 's/^\([^ ]*\) [^ ]* /\1 B: /'
  } | sort -n | cut -d'|' -f1 | sed 's/^/     /'
}

# migrate SRC_NS SRC_DIR DST_IP LABEL [virsh migrate flags...]
# Runs virsh in the source's netns so it can reach the destination's TCP
# socket; the source is addressed through its unix socket.
MIG_OUT=""
migrate() {
  local ns=$1 dir=$2 dip=$3; shift 3
  MIG_OUT=$WORK/migrate.out
  local muri=(--migrateuri "tcp://$dip")
  [[ -n ${NO_MIGRATEURI:-} ]] && muri=()
  ip netns exec "$ns" virsh -c "$(lv_uri "$dir")" migrate "$@" "$DOM" \
    "qemu+tcp://$dip/system" "${muri[@]}" >"$MIG_OUT" 2>&1
}

# jobinfo DIR: downtime / total time / data of the last completed migration
# as the destination's libvirtd recorded it (best effort).
jobinfo() {
  local out
  out=$(virsh -q -c "$(lv_uri "$1")" domjobinfo --completed "$DOM" 2>&1) || { echo "domjobinfo: $out"; return 0; }
  awk -F: '/^Time elapsed:|^Total downtime:|^Data processed:/{gsub(/^ +/, "", $2); gsub(/ +/, " ", $2); printf "%s=%s; ", $1, $2}' <<<"$out"
}

two_main() {
  [[ $EUID -eq 0 ]] || { echo "$ME: must run as root" >&2; exit 1; }
  local t_all; t_all=$(now)
  WORK=$(mktemp -d /tmp/vgpu-2hosts.XXXXXX)
  GUEST_DIR=${GUEST_DIR:-/var/tmp/vgpu-migrate-guest}
  local MEM=${MEM_MIB:-128}
  local A=$WORK/hA B=$WORK/hB CON=$WORK/console.log
  DOM=vgpu-probe
  trap 'two_cleanup' EXIT

  say "work dir $WORK; /dev/kvm $([[ -c /dev/kvm ]] && echo present || echo ABSENT)"
  step "guest: make_guest.sh" "$HERE/make_guest.sh" "$GUEST_DIR"
  step "netns + veth ($IPA <-> $IPB)" net_up
  step "host A root (uuid $UUIDA)" lv_prepare "$A" "$UUIDA" "${TCP_CONF[@]}"
  step "host B root (uuid $UUIDB)" lv_prepare "$B" "$UUIDB" "${TCP_CONF[@]}"
  step "probe hook on A" lv_install_probe_hook "$A" "$WORK/hookA.log"
  step "probe hook on B" lv_install_probe_hook "$B" "$WORK/hookB.log"
  step "libvirtd -d --listen in $NSA" lv_start "$A" $NSA --listen
  step "libvirtd -d --listen in $NSB" lv_start "$B" $NSB --listen
  step "A reaches B over qemu+tcp" bash -c "ip netns exec $NSA virsh -c qemu+tcp://$IPB/system capabilities | grep -m1 '<uuid>'"
  step "B reaches A over qemu+tcp" bash -c "ip netns exec $NSB virsh -c qemu+tcp://$IPA/system capabilities | grep -m1 '<uuid>'"
  step "domain type (kvm, else qemu)" lv_domain_type "$A"
  local TYPE=$LV_TYPE
  [[ $TYPE == kvm ]] || say "NOTE: domain type is qemu (TCG), NOT kvm (reason on the line above)"
  domain_xml "$DOM" "$TYPE" "$GUEST_DIR" "$CON" "$MEM" > "$WORK/domain.xml"

  local UA UB; UA=$(lv_uri "$A"); UB=$(lv_uri "$B")
  step "define + start on A" bash -c "virsh -q -c '$UA' define '$WORK/domain.xml' && virsh -q -c '$UA' start $DOM"
  step "boot: wait 'vgpu-guest: up'" wait_console "$CON" 'vgpu-guest: up' 60
  step "wait for tick 2" wait_console "$CON" 'vgpu-guest: tick 2 ' 30

  local results=() n hA hB rc t0 dt
  # ---- 1. A -> B, client-driven --------------------------------------------
  n=$(last_tick "$CON"); hA=$(wc -l < "$WORK/hookA.log"); hB=$(wc -l < "$WORK/hookB.log")
  t0=$(now); rc=0
  migrate $NSA "$A" $IPB --live --verbose --persistent --undefinesource || rc=$?
  dt=$(since "$t0")
  if [[ $rc -ne 0 ]]; then
    say "FAILED at step 'migrate A->B --live' (rc=$rc, ${dt}s); virsh said:" >&2
    sed 's/^/    | /' "$MIG_OUT" >&2
    exit 1
  fi
  say "[${dt}s] migrate A->B --live (client-driven)  $(tr '\r' '\n' < "$MIG_OUT" | grep -v '^$' | tail -n 1)"
  results+=("A->B --live: ${dt}s, $(jobinfo "$B")")
  step "B: domain running" bash -c "virsh -q -c '$UB' domstate $DOM | grep -x running"
  step "A: domain gone" bash -c "! virsh -q -c '$UA' domstate $DOM 2>/dev/null"
  step "counter continues on B" tick_after "$CON" "$n" 30
  step "no reboot (one 'up' line)" bash -c "n=\$(grep -c 'vgpu-guest: up' '$CON'); echo \"up lines: \$n\"; [ \"\$n\" = 1 ]"
  step "metadata in B's dumpxml" bash -c "virsh -q -c '$UB' dumpxml $DOM | grep -c 'endpoint=\"5a7c0f3e'"
  step "metadata in B's migrate hook stdin" bash -c "grep -c 'endpoint=\"5a7c0f3e' \$(ls '$WORK/hookB.log.d'/*-migrate-begin.xml | head -n 1)"
  echo "$ME: hook calls for A->B:"
  show_hooks "source A" "$WORK/hookA.log" "$hA"
  show_hooks "destination B" "$WORK/hookB.log" "$hB"
  merged "$hA" "$hB"

  # ---- 2. B -> A, peer-to-peer ------------------------------------------------
  n=$(last_tick "$CON"); hA=$(wc -l < "$WORK/hookA.log"); hB=$(wc -l < "$WORK/hookB.log")
  t0=$(now); rc=0
  migrate $NSB "$B" $IPA --live --p2p --verbose --persistent --undefinesource || rc=$?
  dt=$(since "$t0")
  if [[ $rc -ne 0 ]]; then
    say "FAILED at step 'migrate B->A --live --p2p' (rc=$rc, ${dt}s); virsh said:" >&2
    sed 's/^/    | /' "$MIG_OUT" >&2
    exit 1
  fi
  say "[${dt}s] migrate B->A --live --p2p  $(tr '\r' '\n' < "$MIG_OUT" | grep -v '^$' | tail -n 1)"
  results+=("B->A --live --p2p: ${dt}s, $(jobinfo "$A")")
  step "A: domain running" bash -c "virsh -q -c '$UA' domstate $DOM | grep -x running"
  step "counter continues on A" tick_after "$CON" "$n" 30
  step "no reboot (one 'up' line)" bash -c "n=\$(grep -c 'vgpu-guest: up' '$CON'); echo \"up lines: \$n\"; [ \"\$n\" = 1 ]"
  step "metadata in A's dumpxml" bash -c "virsh -q -c '$UA' dumpxml $DOM | grep -c 'endpoint=\"5a7c0f3e'"
  echo "$ME: hook calls for B->A (--p2p):"
  show_hooks "source B" "$WORK/hookB.log" "$hB"
  show_hooks "destination A" "$WORK/hookA.log" "$hA"
  merged "$hA" "$hB"

  step "destroy + undefine on A" bash -c "virsh -q -c '$UA' destroy $DOM && virsh -q -c '$UA' undefine $DOM"
  echo
  say "summary: type=$TYPE mem=${MEM}MiB"
  local r; for r in "${results[@]}"; do say "  $r"; done
  say "host UUIDs: A=$UUIDA B=$UUIDB"
  say "total $(since "$t_all")s"
  say "PASS"
}

two_cleanup() {
  local rc=$?
  set +e
  local d
  for d in "${LV_DIRS[@]}"; do lv_stop "$d"; done
  net_down
  lv_remove_mountpoints
  if [[ -n ${KEEP_WORK:-} ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  [[ $rc -eq 0 ]] || echo "$ME: exit $rc (cleaned up)" >&2
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then two_main "$@"; fi
