#!/usr/bin/env bash
# migrate_e2e.sh — `virsh migrate --live` of a guest with a mediated vGPU
# between two hosts on this machine, each a network namespace with its own
# libvirtd (vgpu-migrate's hook installed) and its own vgpud (reference
# mediated GPU, mutual TLS between the two, a read-only libvirt
# connection), the vGPU state following the guest through the hooks:
#
#   1. virsh start on host A: the hook registers the vGPU with A's vgpud;
#      `vgpu-migrate annotate` writes its descriptor and A's name into the
#      domain's metadata.
#   2. virsh migrate --live A -> B, nothing else: B's hook (migrate begin)
#      checks the descriptor, asks B's vgpud to pull the vGPU from A, and
#      rewrites the domain's mdev UUID to B's instance. A's vgpud
#      pre-copies while QEMU copies the guest, stops the vGPU when libvirt
#      pauses the guest, and hands it over once the guest has left A.
#   3. On B the guest's counter goes on without a reboot and the vGPU runs
#      with its stamps intact and its context sequences rising; A has
#      neither, and saved nothing.
#   4. A migration B -> A that libvirt fails (QEMU sent to a closed port
#      after B's hook pulled): the guest stays on B and so does the vGPU,
#      running; A keeps nothing.
#   5. virsh migrate --live --p2p B -> A: the vGPU follows back (the
#      metadata now names B).
#   6. B's vgpud hangs: B's hook vetoes after its timeout, libvirt cancels
#      the migration, guest and vGPU keep running on A.
#   7. The metadata names the wrong holder (B) and carries no descriptors:
#      B's vgpud asks its peers, and A, whose libvirt migrates the guest,
#      sends the vGPU; A -> B completes as in 2.
#   8. B -> A with A's vgpud killed (-9) while the guest's memory is
#      copied: B's vGPU migration fails, B cancels libvirt's migration, and
#      guest and vGPU stay on B.
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

start_vgpud() {  # NAME NS IP PEER PEER_IP LIBVIRT_URI
  local name=$1 ns=$2 ip=$3 peer=$4 pip=$5 uri=$6
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/vgpud.json" <<JSON
{"mediated": {"reference": {"type": "REF-4C", "instances": 4, "vram": "32M",
                            "contexts": 4, "workload": "4M"}},
 "libvirt": {"uri": "$uri"}}
JSON
  ip netns exec "$ns" "$VGPUD" --config "$WORK/$name/vgpud.json" --host "$name" \
    --listen "$ip:7480" --peer "$peer=$pip:7480" --tls-dir "$WORK/certs" \
    --control "$WORK/$name/control.sock" --store "$WORK/$name/store" \
    --run-dir "$WORK/$name/run" >"$WORK/$name/vgpud.log" 2>&1 &
  VGPUD_PIDS+=($!)
  for _ in $(seq 1 100); do
    "$CLI" --socket "$WORK/$name/control.sock" list >/dev/null 2>&1 && { echo "vgpud $name up on $ip, libvirt $uri"; return 0; }
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
# The domain on host H names H's own vGPU instance (the source's UUID,
# free on H, or the one the hook rewrote it to) and H as the holder.
domain_names_local_vgpu() {  # HOST URI
  local ep
  ep=$(vgpu_device "$WORK/$1/control.sock" "$DOM" endpoint)
  echo "$1's instance $ep"
  [[ -n $ep ]] || return 1
  virsh -q -c "$2" dumpxml "$DOM" | grep -q "endpoint=\"$ep\"" || return 1
  virsh -q -c "$2" dumpxml "$DOM" | grep -o "source=\"$1\"" | head -n 1 | grep .
}
gone_from() { [[ -z $(health_at "$1") ]] && echo "$1 has no $DOM"; }
no_snapshot_on() { ! cli_at "$1" snapshots "$DOM" | grep -q libvirt-stopped; echo "no libvirt-stopped snapshot on $1"; }
still_rising() {  # HOST VAR
  local h before=${!2}; sleep 1; h=$(health_at "$1")
  echo "$1 after the move: ${before##*sequences } -> ${h##*sequences }"
  (( $(seq_of "$h") > $(seq_of "$before") ))
}
# What the source's vgpud saw of the guest while its vGPU followed it: the
# vGPU stopped once libvirt paused the guest there and was handed over once
# the destination's vgpud saw the guest run there; the job's line.
followed() {  # SOURCE-HOST
  local log=$WORK/$1/vgpud.log job
  job=$(cli_at "$1" jobs | awk '$2 == "migrate"' | tail -n 1)
  grep -E "job=${job%% *} .*(guest: |guest on|the guest left|aborting|done:)" "$log" | sed 's/^[^ ]* vgpud [^:]*: /  /'
  echo "$job"
  grep -qE "job=${job%% *} .*guest: domain $DOM is paused for migration" "$log" &&
    grep -qE "job=${job%% *} .*guest on .*: domain $DOM runs on the destination" "$log"
}
# The last migrate job on HOST ended as STATE.
last_migrate_is() {  # HOST STATE
  local line; line=$(cli_at "$1" jobs | awk '$2 == "migrate"' | tail -n 1)
  echo "$line"
  [[ $(awk '{print $5}' <<<"$line") == "$2" ]]
}
# A migration the destination's hook refuses: virsh fails within the
# hook's timeout and names the hook's reason.
vetoed_migrate() {  # NS DIR DEST-IP
  local t0; t0=$(now)
  if ip netns exec "$1" virsh -c "$(lv_uri "$2")" migrate --live "$DOM" \
       "qemu+tcp://$3/system" --migrateuri "tcp://$3" >"$WORK/vetoed.out" 2>&1; then
    echo "the migration succeeded"; return 1
  fi
  echo "refused after $(since "$t0") s: $(grep -oE 'vgpu-libvirt-hook: .*' "$WORK/vetoed.out" | head -n 1 | cut -c1-160)"
  grep -q 'no answer within' "$WORK/vetoed.out"
}
# A migration whose destination vgpud is killed (-9) once the source's
# vGPU waits for the guest to stop: virsh must fail.
migrate_and_kill() {  # NS DIR DEST-IP SOURCE-HOST DEST-VGPUD-INDEX
  ip netns exec "$1" virsh -c "$(lv_uri "$2")" migrate --live "$DOM" \
    "qemu+tcp://$3/system" --migrateuri "tcp://$3" >"$WORK/killed.out" 2>&1 &
  local vp=$! killed=""
  for _ in $(seq 1 500); do
    if cli_at "$4" --json jobs | grep -q '"waiting": "the guest to stop"'; then
      kill -9 "${VGPUD_PIDS[$5]}"; killed=1; break
    fi
    sleep 0.02
  done
  if wait "$vp"; then echo "the migration succeeded"; return 1; fi
  [[ -n $killed ]] || { echo "never saw $4 wait for the guest"; return 1; }
  echo "killed the destination's vgpud; virsh: $(grep -v '^$' "$WORK/killed.out" | tail -n 1)"
}
libvirt_migrate() {  # NS DIR DEST-IP virsh-options...
  migrate "$@" --persistent --undefinesource; cat "$MIG_OUT"
}
# A migration libvirt fails after the destination's hook ran: QEMU is told
# to send the guest to the source's own address, where nothing listens.
failing_migrate() {  # NS DIR DEST-IP SOURCE-IP
  if ip netns exec "$1" virsh -c "$(lv_uri "$2")" migrate --live "$DOM" \
       "qemu+tcp://$3/system" --migrateuri "tcp://$4" >"$WORK/failed.out" 2>&1; then
    echo "the migration succeeded"; return 1
  fi
  cat "$WORK/failed.out"
}

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
  local UA UB; UA=$(lv_uri "$A"); UB=$(lv_uri "$B")
  step "vgpud on hostA" start_vgpud hostA $NSA $IPA hostB $IPB "$UA"
  step "vgpud on hostB" start_vgpud hostB $NSB $IPB hostA $IPA "$UB"
  step "domain type (kvm, else qemu)" lv_domain_type "$A"
  domain_xml "$DOM" "$LV_TYPE" "$GUEST_DIR" "$CON" 128 > "$WORK/domain.xml"
  step "define + start on A (hook registers)" bash -c "virsh -q -c '$UA' define '$WORK/domain.xml' && virsh -q -c '$UA' start $DOM"
  step "boot: wait 'vgpu-guest: up'" wait_console "$CON" 'vgpu-guest: up' 60
  step "wait for tick 2" wait_console "$CON" 'vgpu-guest: tick 2 ' 30
  step "vGPU runs on hostA" runs_on hostA H_A
  step "vgpu-migrate annotate (descriptors, holder)" cli_at hostA annotate "$DOM" --libvirt-uri "$UA"

  local before lines
  before=$(last_tick "$CON"); lines=$(wc -l < "$CON")
  step "virsh migrate --live A -> B (and nothing else)" libvirt_migrate $NSA "$A" $IPB --live
  step "guest resumed on B (no reboot)" guest_resumed "$CON" "$lines" "$before"
  step "domain runs on B" bash -c "virsh -q -c '$UB' domstate $DOM | grep -x running"
  step "the vGPU followed: hostA's view" followed hostA
  step "hostA's migration is done" last_migrate_is hostA done
  step "libvirt's own figures (B)" jobinfo "$B"
  step "vGPU runs on hostB" runs_on hostB H_B
  step "B's domain names B's vGPU and B as holder" domain_names_local_vgpu hostB "$UB"
  step "its contexts keep going" still_rising hostB H_B
  step "hostA has no vGPU left" gone_from hostA
  step "hostA saved nothing on stop" no_snapshot_on hostA

  before=$(last_tick "$CON"); lines=$(wc -l < "$CON")
  step "virsh migrate B -> A that libvirt fails" failing_migrate $NSB "$B" $IPA $IPB
  step "hostB's migration gave up, vGPU resumed" last_migrate_is hostB failed
  step "hostB's view" bash -c "grep -E 'aborting|source resumed' '$WORK/hostB/vgpud.log' | tail -n 2"
  step "guest still runs on B" bash -c "virsh -q -c '$UB' domstate $DOM | grep -x running"
  step "guest went on (no reboot)" guest_resumed "$CON" "$lines" "$before"
  step "vGPU still runs on hostB" runs_on hostB H_B
  step "hostA kept nothing" gone_from hostA

  before=$(last_tick "$CON"); lines=$(wc -l < "$CON")
  step "virsh migrate --live --p2p B -> A" libvirt_migrate $NSB "$B" $IPA --live --p2p
  step "guest resumed on A (no reboot)" guest_resumed "$CON" "$lines" "$before"
  step "the vGPU followed back: hostB's view" followed hostB
  step "libvirt's own figures (A)" jobinfo "$A"
  step "vGPU runs on hostA" runs_on hostA H_A
  step "A's domain names A's vGPU and A as holder" domain_names_local_vgpu hostA "$UA"
  step "its contexts keep going" still_rising hostA H_A
  step "hostB has no vGPU left" gone_from hostB

  # B's vgpud hangs (SIGSTOP): B's hook gives up after its timeout and
  # vetoes; libvirt cancels, and the guest and its vGPU run on A as before.
  step "B's hook: 3 s timeout" "$HOOK" install --hooks-dir "$B/root/etc/libvirt/hooks" \
    --socket "$WORK/hostB/control.sock" --state-dir "$WORK/hookstateB" --timeout 3
  kill -STOP "${VGPUD_PIDS[1]}"
  before=$(last_tick "$CON"); lines=$(wc -l < "$CON")
  step "virsh migrate A -> B, B's vgpud hung" vetoed_migrate $NSA "$A" $IPB
  kill -CONT "${VGPUD_PIDS[1]}"
  step "guest still runs on A" bash -c "virsh -q -c '$UA' domstate $DOM | grep -x running"
  step "guest went on (no reboot)" guest_resumed "$CON" "$lines" "$before"
  step "vGPU still runs on hostA" runs_on hostA H_A
  step "hostA started no migration" last_migrate_is hostA done
  step "hostB has no vGPU" gone_from hostB

  # Metadata that names the wrong holder (written by hand, as an older
  # definition would carry) and no descriptors: B's vgpud asks its peers,
  # and A, whose libvirt is migrating the guest, sends the vGPU.
  step "B's hook: back to 60 s" "$HOOK" install --hooks-dir "$B/root/etc/libvirt/hooks" \
    --socket "$WORK/hostB/control.sock" --state-dir "$WORK/hookstateB" --timeout 60
  step "stale metadata (holder hostB)" virsh -q -c "$UA" metadata "$DOM" \
    https://vgpu-migrate.dev/xmlns/libvirt/1 --key vgpu --live --config \
    --set "<vm source='hostB'><device strategy='mediated' endpoint='$(vgpu_device "$WORK/hostA/control.sock" "$DOM" endpoint)'/></vm>"
  before=$(last_tick "$CON"); lines=$(wc -l < "$CON")
  step "virsh migrate --live A -> B (stale metadata)" libvirt_migrate $NSA "$A" $IPB --live
  step "guest resumed on B (no reboot)" guest_resumed "$CON" "$lines" "$before"
  step "the vGPU followed from hostA" followed hostA
  step "libvirt's own figures (B, again)" jobinfo "$B"
  step "vGPU runs on hostB" runs_on hostB H_B
  step "B's domain names B's vGPU and B as holder" domain_names_local_vgpu hostB "$UB"
  step "hostA has no vGPU left" gone_from hostA

  # The vGPU cannot follow (A's vgpud killed while the guest's memory is
  # copied): B cancels libvirt's migration, and guest and vGPU stay on B.
  before=$(last_tick "$CON"); lines=$(wc -l < "$CON")
  step "virsh migrate B -> A, A's vgpud killed mid-copy" migrate_and_kill $NSB "$B" $IPA hostB 0
  step "hostB cancelled the guest's migration" bash -c "grep -E 'aborting|migration is cancelled' '$WORK/hostB/vgpud.log' | tail -n 2 | sed 's/^[^ ]* vgpud [^:]*: //'; grep -q 'the guest.s migration is cancelled' '$WORK/hostB/vgpud.log'"
  step "guest still runs on B" bash -c "virsh -q -c '$UB' domstate $DOM | grep -x running"
  step "guest went on (no reboot)" guest_resumed "$CON" "$lines" "$before"
  step "vGPU still runs on hostB" runs_on hostB H_B

  echo
  say "hook calls, both hosts in time order:"
  merged 0 0
  say "total $(since "$t_all")s"
  say "PASS"
}

mig_main "$@"
