#!/usr/bin/env bash
# run_domain.sh — one real libvirtd, one real guest, libvirt's qemu hook,
# `virsh save` / `virsh restore`, and the project's <metadata> element.
#
# Steps (each printed with its duration; the first failure names its step,
# prints the libvirtd errors and exits 1 after cleaning up):
#   1. build (or reuse) the guest with make_guest.sh
#   2. write a private libvirt root and the probe hook
#      /etc/libvirt/hooks/qemu.d/99-probe  (as libvirtd sees it; see below)
#   3. start libvirtd -d (no systemd here; Debian 12 has no virtqemud)
#   4. pick domain type kvm, falling back to qemu (TCG) and saying so
#   5. define + start a persistent domain carrying
#      <vgpu:vm xmlns:vgpu="https://vgpu-migrate.dev/xmlns/libvirt/1">
#   6. wait for "vgpu-guest: up" on the serial console (a file)
#   7. virsh save, virsh restore, wait for the tick counter to continue
#   8. check the metadata in dumpxml, `virsh metadata`, the save image and
#      the XML the restore hook received on stdin
#   9. destroy + undefine; stop libvirtd; remove everything it created
#
# Isolation: libvirtd runs in a private mount namespace (unshare -m) in which
# $WORK/root/{etc/libvirt,run/libvirt,var/lib/libvirt,var/cache/libvirt,
# var/log/libvirt} are bind-mounted over the system paths, so libvirtd runs
# with its real privileged (qemu:///system) layout and reads hooks from
# /etc/libvirt/hooks/qemu.d/, while the host's /etc/libvirt is never written.
# /etc/passwd and /etc/group are overlaid in that namespace with a
# libvirt-qemu user, because libvirt 9.0's qemu driver resolves its built-in
# default user before reading qemu.conf and fails without it (the user is
# normally created by libvirt-daemon-system, which setup_packages.sh avoids).
# Clients reach it with qemu:///system?socket=$WORK/root/run/libvirt/libvirt-sock.
# The only host-visible side effect is creating the empty mount-point dirs
# /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt when they
# are missing; they are removed again at exit.
#
# Environment: GUEST_DIR (default /var/tmp/vgpu-migrate-guest, a cache that is
# kept), DOMAIN_TYPE (kvm|qemu, default: kvm if available), MEM_MIB (128),
# KEEP_WORK=1 (keep $WORK for inspection), BOOT_TIMEOUT (60 s),
# LV_CAPS_CACHE=DIR (keep libvirt's QEMU capabilities cache there between
# runs: libvirtd start drops from ~5 s to well under 1 s; off by default),
# HOOK_LATE=1 (install the hook only after libvirtd started, show whether a
# plain start calls it, then SIGHUP libvirtd and run the normal sequence).
#
# This file is also sourced by two_hosts.sh for its lv_* helpers.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VGPU_NS=https://vgpu-migrate.dev/xmlns/libvirt/1
ME=${ME:-run_domain.sh}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
say() { echo "$ME: $*"; }

# ---- step runner -----------------------------------------------------------
# step NAME CMD...: runs CMD in this shell (so it may set variables), output
# to $WORK/step.out; prints the duration and the output's last line.
declare -a STEP_TIMES=()
LV_DIRS=()            # private libvirt roots started (for cleanup/diagnostics)
step() {
  local name=$1; shift
  local t0 rc=0
  t0=$(now)
  "$@" >"$WORK/step.out" 2>&1 || rc=$?
  local dt; dt=$(since "$t0")
  if [[ $rc -ne 0 ]]; then
    echo "$ME: FAILED at step '$name' (rc=$rc, after ${dt}s)" >&2
    sed 's/^/    | /' "$WORK/step.out" >&2
    local d
    for d in "${LV_DIRS[@]}"; do
      if [[ -f $d/root/var/log/libvirt/libvirtd.log ]]; then
        echo "    last libvirtd errors ($d):" >&2
        grep -E ' error : ' "$d/root/var/log/libvirt/libvirtd.log" \
          | grep -vE 'dnsmasq|GDBus|udevGetDMIData|dmidecode|/dev/kvm|accel .kvm' \
          | tail -n 5 | cut -c1-300 | sed 's/^/    | /' >&2 || true
      fi
    done
    exit 1
  fi
  STEP_TIMES+=("$name=$dt")
  printf '%s: [%6.2fs] %-34s %s\n' "$ME" "$dt" "$name" "$(tail -n 1 "$WORK/step.out" | cut -c1-110)"
}

# ---- private libvirtd -------------------------------------------------------
LV_MOUNTS=(etc/libvirt run/libvirt var/lib/libvirt var/cache/libvirt var/log/libvirt)
CREATED_MOUNTPOINTS=()

# lv_prepare DIR HOST_UUID [extra libvirtd.conf lines...]
lv_prepare() {
  local d=$1 uuid=$2; shift 2
  local m
  for m in "${LV_MOUNTS[@]}"; do mkdir -p "$d/root/$m"; done
  mkdir -p "$d/root/etc/libvirt/hooks/qemu.d"
  {
    echo 'log_outputs="1:file:/var/log/libvirt/libvirtd.log"'
    echo 'log_filters="3:object 3:json 3:event 3:util 3:rpc 3:conf 3:cpu 1:qemu 1:hook 1:libvirt"'
    echo "host_uuid=\"$uuid\""
    local l; for l in "$@"; do echo "$l"; done
  } > "$d/root/etc/libvirt/libvirtd.conf"
  cat > "$d/root/etc/libvirt/qemu.conf" <<'EOF'
user = "root"
group = "root"
# no virtlogd: qemu writes its own stdio log
stdio_handler = "file"
security_driver = "none"
EOF
  cp /etc/passwd "$d/passwd"; cp /etc/group "$d/group"
  getent passwd libvirt-qemu >/dev/null || \
    echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin' >> "$d/passwd"
  getent group libvirt-qemu >/dev/null || echo 'libvirt-qemu:x:64055:' >> "$d/group"
}

# lv_install_probe_hook DIR LOGFILE: the probe hook, as libvirt calls it.
# Appends "<epoch.ns> $0 $* | <first line of stdin>" to LOGFILE and saves the whole stdin
# to LOGFILE.d/NN-<op>-<subop>.xml; prints nothing; exits 0.
lv_install_probe_hook() {
  local d=$1 log=$2
  mkdir -p "$log.d"
  : > "$log"
  cat > "$d/root/etc/libvirt/hooks/qemu.d/99-probe" <<EOF
#!/bin/bash
in=\$(cat)
n=\$(ls '$log.d' | wc -l)
printf '%s\n' "\$in" > '$log.d'/\$(printf %02d "\$n")-\$2-\$3.xml
printf '%s %s %s | %s\n' "\$(date +%s.%N)" "\$0" "\$*" "\$(printf '%s\n' "\$in" | head -n 1)" >> '$log'
exit 0
EOF
  chmod 755 "$d/root/etc/libvirt/hooks/qemu.d/99-probe"
}

lv_uri() { echo "qemu:///system?socket=$1/root/run/libvirt/libvirt-sock"; }

# lv_start DIR [NETNS [LIBVIRTD_ARGS...]]: starts libvirtd -d in a private
# mount namespace (inside NETNS when given) and waits until it answers.
lv_start() {
  local d=$1 ns=${2:-} m
  shift; [[ $# -gt 0 ]] && shift
  local args="$*"
  for m in "${LV_MOUNTS[@]}"; do
    if [[ ! -d /$m ]]; then mkdir -p "/$m"; CREATED_MOUNTPOINTS+=("/$m"); fi
  done
  local binds=""
  for m in "${LV_MOUNTS[@]}"; do binds+="mount --bind '$d/root/$m' '/$m' && "; done
  binds+="mount --bind '$d/passwd' /etc/passwd && mount --bind '$d/group' /etc/group"
  # Optional persistent QEMU capabilities cache (saves ~5 s of probing per
  # start; libvirt revalidates it against the qemu binary and its own version).
  if [[ -n ${LV_CAPS_CACHE:-} && -d $LV_CAPS_CACHE ]]; then
    mkdir -p "$d/root/var/cache/libvirt/qemu/capabilities"
    cp -a "$LV_CAPS_CACHE"/. "$d/root/var/cache/libvirt/qemu/capabilities/" 2>/dev/null || true
  fi
  local pre=()
  [[ -n $ns ]] && pre=(ip netns exec "$ns")
  LV_DIRS+=("$d")
  "${pre[@]}" unshare -m --propagation private \
    sh -c "$binds && exec /usr/sbin/libvirtd -d $args -p /run/libvirt/libvirtd.pid" \
    || { echo "libvirtd -d exited non-zero"; return 1; }
  local i
  for i in $(seq 1 100); do
    if [[ -S $d/root/run/libvirt/libvirt-sock ]] && virsh -q -c "$(lv_uri "$d")" version >/dev/null 2>&1; then
      echo "libvirtd pid $(cat "$d/root/run/libvirt/libvirtd.pid") up; $(virsh -c "$(lv_uri "$d")" version | grep -E 'Running hypervisor')"
      return 0
    fi
    sleep 0.1
  done
  echo "libvirtd did not answer on $(lv_uri "$d") within 10 s"
  return 1
}

# pid_alive PID: running and not a zombie (init reaps daemons lazily here).
pid_alive() { [[ -r /proc/$1/stat ]] && ! grep -qE '^[0-9]+ \(.*\) Z' "/proc/$1/stat" 2>/dev/null; }

# lv_stop DIR: destroys its domains, stops libvirtd, kills stray qemu.
lv_stop() {
  local d=$1 uri pid p
  uri=$(lv_uri "$d")
  if [[ -S $d/root/run/libvirt/libvirt-sock ]]; then
    for dom in $(virsh -q -c "$uri" list --all --name 2>/dev/null); do
      virsh -q -c "$uri" destroy "$dom" >/dev/null 2>&1 || true
      virsh -q -c "$uri" undefine "$dom" >/dev/null 2>&1 || true
    done
  fi
  for p in "$d"/root/run/libvirt/qemu/*.pid; do
    [[ -f $p ]] || continue
    pid=$(cat "$p" 2>/dev/null) && kill "$pid" 2>/dev/null || true
  done
  if [[ -f $d/root/run/libvirt/libvirtd.pid ]]; then
    pid=$(cat "$d/root/run/libvirt/libvirtd.pid" 2>/dev/null) || pid=""
    if [[ -n $pid ]]; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do pid_alive "$pid" || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  if [[ -n ${LV_CAPS_CACHE:-} && -d $d/root/var/cache/libvirt/qemu/capabilities ]]; then
    mkdir -p "$LV_CAPS_CACHE" && cp -a "$d/root/var/cache/libvirt/qemu/capabilities"/. "$LV_CAPS_CACHE/" 2>/dev/null || true
  fi
}

lv_remove_mountpoints() {
  local m
  for m in "${CREATED_MOUNTPOINTS[@]}"; do rmdir "$m" 2>/dev/null || true; done
  CREATED_MOUNTPOINTS=()
}

# lv_domain_type DIR: sets LV_TYPE to kvm if libvirt offers it, else qemu
# (and says so, with libvirt's verbatim error).
LV_TYPE=""
lv_domain_type() {
  local d=$1 out
  if [[ -n ${DOMAIN_TYPE:-} ]]; then LV_TYPE=$DOMAIN_TYPE; echo "domain type $LV_TYPE (DOMAIN_TYPE)"; return; fi
  if out=$(virsh -c "$(lv_uri "$d")" domcapabilities --virttype kvm 2>&1 >/dev/null); then
    LV_TYPE=kvm; echo "domain type kvm"
  else
    LV_TYPE=qemu
    echo "WARNING: domain type kvm unavailable, FALLING BACK TO qemu (TCG): $(echo "$out" | grep -v '^$' | tail -n 1)"
  fi
}

# domain_xml NAME TYPE GUEST_DIR CONSOLE MEM_MIB
domain_xml() {
  cat <<EOF
<domain type='$2'>
  <name>$1</name>
  <memory unit='MiB'>$5</memory>
  <vcpu>1</vcpu>
  <metadata>
    <vgpu:vm xmlns:vgpu="$VGPU_NS">
      <vgpu:device strategy="mediated" endpoint="5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01"/>
    </vgpu:vm>
  </metadata>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$3/vmlinuz</kernel>
    <initrd>$3/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='$4' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# wait_console FILE REGEX TIMEOUT_S: waits for a line matching REGEX.
wait_console() {
  local f=$1 re=$2 to=$3 i
  for i in $(seq 1 $((to * 10))); do
    if [[ -f $f ]] && grep -qE "$re" "$f"; then grep -E "$re" "$f" | tail -n 1; return 0; fi
    sleep 0.1
  done
  echo "no line matching '$re' in $f after ${to}s; last lines:"; tail -n 5 "$f" 2>/dev/null || true
  return 1
}
last_tick() { grep -oE 'vgpu-guest: tick [0-9]+' "$1" | tail -n 1 | awk '{print $3}'; }

# has_metadata: stdin is domain XML; checks the element and its attributes.
has_metadata() {
  local x; x=$(cat)
  grep -q "$VGPU_NS" <<<"$x" && grep -q 'strategy="mediated"' <<<"$x" \
    && grep -q 'endpoint="5a7c0f3e-1d2b-4e8f-9c6a-0b1d2e3f4a01"' <<<"$x"
}

# ============================================================================
main() {
  [[ $EUID -eq 0 ]] || { echo "$ME: must run as root" >&2; exit 1; }
  local t_all; t_all=$(now)
  WORK=$(mktemp -d /tmp/vgpu-libvirt.XXXXXX)
  GUEST_DIR=${GUEST_DIR:-/var/tmp/vgpu-migrate-guest}
  local MEM=${MEM_MIB:-128} BOOT_TO=${BOOT_TIMEOUT:-60}
  local D=$WORK/host URI DOM=vgpu-probe CON=$WORK/console.log HOOKLOG=$WORK/hook.log
  trap 'main_cleanup' EXIT
  local MARK=()  # hook log line count per step

  say "work dir $WORK; PID 1 is '$(ps -o comm= -p 1)'; kernel $(uname -r); /dev/kvm $([[ -c /dev/kvm ]] && echo present || echo ABSENT)"
  for c in libvirtd virsh qemu-system-x86_64 unshare; do
    command -v $c >/dev/null || { say "FAILED at step 'prerequisites': $c not found (run setup_packages.sh)" >&2; exit 1; }
  done

  step "guest: make_guest.sh" "$HERE/make_guest.sh" "$GUEST_DIR"
  step "libvirt root + probe hook" lv_prepare "$D" 5b0f1a2c-0000-4000-8000-00000000a001
  if [[ -z ${HOOK_LATE:-} ]]; then
    step "install hook qemu.d/99-probe" lv_install_probe_hook "$D" "$HOOKLOG"
  fi
  step "libvirtd -d (start)" lv_start "$D"
  URI=$(lv_uri "$D")
  step "domain type (kvm, else qemu)" lv_domain_type "$D"
  local TYPE=$LV_TYPE
  [[ $TYPE == kvm ]] || say "NOTE: domain type is qemu (TCG), NOT kvm (reason on the line above)"
  domain_xml "$DOM" "$TYPE" "$GUEST_DIR" "$CON" "$MEM" > "$WORK/domain.xml"
  vs() { virsh -q -c "$URI" "$@"; }

  hook_mark() { MARK+=("$1=$(wc -l < "$HOOKLOG")"); }
  if [[ -n ${HOOK_LATE:-} ]]; then
    # Does libvirtd see a hook installed after it started (into an empty
    # qemu.d)? Start + destroy once, count the calls, then SIGHUP.
    step "install hook AFTER libvirtd start" lv_install_probe_hook "$D" "$HOOKLOG"
    domain_xml "$DOM-late" "$TYPE" "$GUEST_DIR" "$WORK/console-late.log" "$MEM" > "$WORK/late.xml"
    step "create+destroy, hook added late" bash -c "virsh -q -c '$URI' create '$WORK/late.xml' && virsh -q -c '$URI' destroy $DOM-late"
    say "hook calls seen for a hook added after libvirtd started: $(wc -l < "$HOOKLOG")"
    step "kill -HUP libvirtd (reload)" bash -c "kill -HUP \$(cat '$D/root/run/libvirt/libvirtd.pid') && sleep 1 && virsh -q -c '$URI' version >/dev/null"
    : > "$HOOKLOG"; rm -f "$HOOKLOG.d"/*
  fi
  hook_mark define
  step "virsh define" vs define "$WORK/domain.xml"
  hook_mark start
  local t_boot; t_boot=$(now)
  step "virsh start" vs start "$DOM"
  step "boot: wait 'vgpu-guest: up'" wait_console "$CON" 'vgpu-guest: up' "$BOOT_TO"
  local boot_s; boot_s=$(since "$t_boot")
  step "wait for tick 2" wait_console "$CON" 'vgpu-guest: tick 2 ' 30
  step "metadata in dumpxml (before)" bash -c "virsh -q -c '$URI' dumpxml $DOM | grep -A3 '<metadata'; virsh -q -c '$URI' dumpxml $DOM | grep -q 'endpoint=\"5a7c0f3e'"
  step "virsh metadata (API, before)" vs metadata "$DOM" "$VGPU_NS"

  local before; before=$(last_tick "$CON")
  hook_mark save
  step "virsh save" vs save "$DOM" "$WORK/save.img"
  local save_bytes; save_bytes=$(stat -c %s "$WORK/save.img")
  say "save image: $save_bytes bytes; last tick before save: $before"
  step "metadata in save image" bash -c "virsh -q -c '$URI' save-image-dumpxml '$WORK/save.img' | grep -c 'endpoint=\"5a7c0f3e'"
  step "domain shut off after save" bash -c "virsh -q -c '$URI' domstate $DOM | grep -x 'shut off'"
  hook_mark restore
  local t_res; t_res=$(now)
  step "virsh restore" vs restore "$WORK/save.img"
  step "counter continues after restore" wait_console "$CON" "vgpu-guest: tick $((before + 1)) " 30
  local resume_s; resume_s=$(since "$t_res")
  step "no reboot (one 'up' line)" bash -c "n=\$(grep -c 'vgpu-guest: up' '$CON'); echo \"up lines: \$n\"; [ \"\$n\" = 1 ]"
  step "metadata in dumpxml (after)" bash -c "virsh -q -c '$URI' dumpxml $DOM | grep -c 'endpoint=\"5a7c0f3e'"
  step "virsh metadata (API, after)" vs metadata "$DOM" "$VGPU_NS"
  step "metadata in restore hook stdin" bash -c "f=\$(ls '$HOOKLOG.d'/*-restore-begin.xml | head -n 1) && grep -c 'endpoint=\"5a7c0f3e' \"\$f\""
  hook_mark destroy
  step "virsh destroy" vs destroy "$DOM"
  hook_mark undefine
  step "virsh undefine" vs undefine "$DOM"
  hook_mark end

  echo
  say "hook log ($HOOKLOG), grouped by the virsh command that caused it:"
  local i from to label
  for ((i = 0; i < ${#MARK[@]} - 1; i++)); do
    label=${MARK[i]%%=*}; from=${MARK[i]#*=}; to=${MARK[i+1]#*=}
    echo "  -- virsh $label"
    if ((to > from)); then
      sed -n "$((from + 1)),${to}p" "$HOOKLOG" | sed 's/^/     /'
    else
      echo "     (no hook calls)"
    fi
  done
  echo
  say "summary: type=$TYPE mem=${MEM}MiB start->'up'=${boot_s}s restore->next tick=${resume_s}s save image=$save_bytes bytes"
  say "step times: ${STEP_TIMES[*]}"
  say "metadata survived save/restore: yes (dumpxml, virsh metadata, save image, restore hook stdin)"
  say "total $(since "$t_all")s"
  say "PASS"
}

main_cleanup() {
  local rc=$?
  set +e
  local d
  for d in "${LV_DIRS[@]}"; do lv_stop "$d"; done
  lv_remove_mountpoints
  if [[ -n ${KEEP_WORK:-} ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  [[ $rc -eq 0 ]] || echo "$ME: exit $rc (cleaned up)" >&2
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
