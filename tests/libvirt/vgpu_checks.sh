# vgpu_checks.sh — checks shared by hook_e2e.sh and migrate_e2e.sh: what a
# vgpud says of a VM's vGPU, and whether a guest resumed rather than
# rebooted. Sourced; expects $CLI (vgpu-migrate).

# vgpu_device SOCKET VM FIELD: a field of the VM's first vGPU as
# `vgpu-migrate --json list` gives it (health, endpoint); empty when vgpud
# does not have the VM.
vgpu_device() {
  "$CLI" --socket "$1" --json list | python3 -c '
import json, sys
for vm in json.load(sys.stdin):
    if vm["name"] == sys.argv[1]:
        print(vm["devices"][0][sys.argv[2]])' "$2" "$3"
}

# vgpu_wait_intact SOCKET VM VAR: waits (5 s) for the vGPU's health line to
# say "RUNNING; stamps intact", prints it and keeps it in VAR.
vgpu_wait_intact() {
  local h=""
  for _ in $(seq 1 50); do
    h=$(vgpu_device "$1" "$2" health)
    [[ $h == 'RUNNING; stamps intact'* ]] && break
    sleep 0.1
  done
  echo "$h"
  printf -v "$3" '%s' "$h"
  [[ $h == 'RUNNING; stamps intact'* ]]
}

# seq_of HEALTH: the first context's sequence number in a health line.
seq_of() { sed -E 's/.*context sequences ([0-9]+).*/\1/' <<<"$1"; }

# guest_resumed CONSOLE LINES BEFORE: the guest went on, not rebooted: a
# tick newer than BEFORE after line LINES of the console, and still a
# single "up" line.
guest_resumed() {
  local t
  for _ in $(seq 1 300); do
    t=$(tail -n +"$(( $2 + 1 ))" "$1" | grep -oE 'vgpu-guest: tick [0-9]+' | tail -n 1 | awk '{print $3}')
    if [[ -n $t ]] && (( t > $3 )); then
      echo "tick $3 before, tick $t after; up lines: $(grep -c 'vgpu-guest: up' "$1")"
      [[ $(grep -c 'vgpu-guest: up' "$1") == 1 ]]
      return
    fi
    sleep 0.1
  done
  echo "no new tick"; return 1
}
