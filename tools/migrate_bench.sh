#!/usr/bin/env bash
# Migrates emulated vGPUs between two vgpud on this machine and compares
# each migration with a raw TCP connection measured in the same run, with
# the same socket options (//migrator/bench:vgpu-tcp-baseline). The figures
# in docs/PERFORMANCE.md ("Migration between two vgpud") come from this
# script.
#
#   tools/migrate_bench.sh
#
# What it does, in one run:
#   1. builds vgpud, vgpu-migrate, the emulated device and workload and the
#      two helpers in migrator/bench with -c opt (no bazel-* symlinks are
#      touched; the binaries are found with `bazel info -c opt bazel-bin`)
#      and runs private copies of them (mb-daemon = vgpud, mb-cli =
#      vgpu-migrate, ...; the list is printed);
#   2. loopback: two vgpud on 127.0.0.1 (--insecure), the raw TCP baseline
#      between two 127.0.0.1 endpoints, then
#      a. throughput: an idle vGPU whose VRAM holds random bytes or VRAM-like
#         bytes, migrated with and without compression;
#      b. downtime: the counter workload dirtying VRAM at 64 MiB/s during the
#         migration, several times; after each the workload is started on
#         the destination's device to check the migrated counters;
#   3. as root (unless VGPU_MIGRATE_BENCH_NETNS=0): the same between two
#      network namespaces joined by a veth pair (10.78.0.1 <-> 10.78.0.2),
#      where the peers use mutual TLS (certificates made by
#      `vgpu-migrate certs`); the baselines there are plain TCP and TLS
#      through the same kj-tls context vgpud uses.
# It prints the machine, every command it runs, and the tables. A migration
# that fails (or whose destination fails the counter check) is recorded,
# shown in the tables with its error, and the run goes on, but the script
# then exits 1; anything else that fails (build, daemons, fills) stops it
# at once with exit 1. Either way every process it started is stopped, the
# namespaces and its scratch directory are deleted. Results (one JSON
# object per line), the CLI's JSON and the logs stay in the output directory.
#
# Environment:
#   VGPU_MIGRATE_BENCH_VRAM        VRAM of each emulated vGPU (1G)
#   VGPU_MIGRATE_BENCH_DIRTY_PPS   counter workload, pages/s (16384 = 64 MiB/s)
#   VGPU_MIGRATE_BENCH_REPEATS     downtime runs per link (3)
#   VGPU_MIGRATE_BENCH_TCP_RUNS    raw TCP runs per baseline (3; median used)
#   VGPU_MIGRATE_BENCH_PORT        first of three TCP ports (17591)
#   VGPU_MIGRATE_BENCH_NETNS       auto (root only) | 1 | 0
#   VGPU_MIGRATE_BENCH_OUT         output directory
#                                  (default /tmp/migrate_bench-<date>)
#   VGPU_MIGRATE_BENCH_DISK_CACHE  bazel --disk_cache
#                                  (default ~/.cache/vgpu-migrate/bazel-disk)
set -euo pipefail
cd "$(dirname "$0")/.."

vram="${VGPU_MIGRATE_BENCH_VRAM:-1G}"
pps="${VGPU_MIGRATE_BENCH_DIRTY_PPS:-16384}"
repeats="${VGPU_MIGRATE_BENCH_REPEATS:-3}"
tcp_runs="${VGPU_MIGRATE_BENCH_TCP_RUNS:-3}"
port="${VGPU_MIGRATE_BENCH_PORT:-17591}"
netns_mode="${VGPU_MIGRATE_BENCH_NETNS:-auto}"
stamp="$(date +%Y%m%d-%H%M%S)"
out="${VGPU_MIGRATE_BENCH_OUT:-/tmp/migrate_bench-${stamp}}"
disk_cache="${VGPU_MIGRATE_BENCH_DISK_CACHE:-$HOME/.cache/vgpu-migrate/bazel-disk}"
results="${out}/results.jsonl"

die() {
  echo "migrate_bench: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------
# Processes, namespaces and the scratch directory, undone on any exit.
pids=()
namespaces=()
work=""
failures=0  # migrations that failed, and destinations that failed the check

stop_pid() {
  local pid="$1" i
  kill -TERM "${pid}" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 "${pid}" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "${pid}" 2>/dev/null || true
  wait "${pid}" 2>/dev/null || true
}

forget_pid() {
  local keep=() p
  for p in "${pids[@]}"; do [ "${p}" = "$1" ] || keep+=("${p}"); done
  pids=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
  local rc=$? i ns
  trap - EXIT INT TERM
  set +e
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
  for ns in "${namespaces[@]+"${namespaces[@]}"}"; do ip netns del "${ns}"; done
  [ -n "${work}" ] && rm -rf "${work}"
  if [ "${rc}" -ne 0 ]; then
    echo "migrate_bench: FAILED (exit ${rc}); logs in ${out}/logs" >&2
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Prints a command line (to stderr and commands.txt) as it can be pasted,
# with $BIN for the opt bazel-bin and $WORK for the scratch directory.
show() {
  local line
  line="$(printf '%q ' "$@")"
  line="${line% }"
  line="${line//"${bin_dir}"/\$BIN}"
  line="${line//"${work}"/\$WORK}"
  printf '+ %s\n' "${line}" | tee -a "${out}/commands.txt" >&2
}

# Shows a command, then runs it in the foreground.
run() {
  show "$@"
  "$@"
}

# Starts a command in the background with its output in logs/NAME.log;
# sets bg_pid.
bg() {
  local name="$1"
  shift
  show "$@"
  echo "  (in the background, output in logs/${name}.log)" >&2
  "$@" >"${out}/logs/${name}.log" 2>&1 &
  bg_pid=$!
  pids+=("${bg_pid}")
}

wait_socket() {
  local path="$1" pid="$2" i
  for i in $(seq 200); do
    [ -S "${path}" ] && return 0
    kill -0 "${pid}" 2>/dev/null || die "process ${pid} exited before ${path} appeared"
    sleep 0.05
  done
  die "timed out waiting for ${path}"
}

# ---------------------------------------------------------------------------
echo "==> Building with -c opt (disk cache ${disk_cache})"
targets=(//migrator:vgpud //migrator:vgpu-migrate
  //agents/emulated:vgpu-emu-device //agents/emulated:vgpu-emu-workload
  //migrator/bench:vgpu-tcp-baseline //migrator/bench:vgpu-bench-fill)
# --symlink_prefix=/ leaves bazel-bin and friends pointing where they were,
# for whoever else builds in this checkout.
bazel build -c opt --symlink_prefix=/ --disk_cache="${disk_cache}" "${targets[@]}"
bin_dir="$(bazel info -c opt bazel-bin 2>/dev/null)"
built=(migrator/vgpud migrator/vgpu-migrate agents/emulated/vgpu-emu-device
  agents/emulated/vgpu-emu-workload migrator/bench/vgpu-tcp-baseline
  migrator/bench/vgpu-bench-fill)
for t in "${built[@]}"; do
  [ -x "${bin_dir}/${t}" ] || die "build output missing: ${bin_dir}/${t}"
done

mkdir -p "${out}/logs"
: >"${results}"
: >"${out}/commands.txt"
work="$(mktemp -d /tmp/mbench.XXXXXX)"  # short: Unix socket paths
# Private copies of the binaries: one consistent set for the whole run even
# if the checkout is rebuilt meanwhile, under names that a broad
# `pkill -f vgpud` or `pkill -f vgpu-emu` by other work on a shared machine
# does not match (it stopped earlier runs halfway).
mkdir "${work}/bin"
copies=(mb-daemon mb-cli mb-device mb-workload mb-tcp-baseline mb-fill)
for i in "${!built[@]}"; do
  cp "${bin_dir}/${built[i]}" "${work}/bin/${copies[i]}"
done
vgpud="${work}/bin/mb-daemon"
cli="${work}/bin/mb-cli"
device="${work}/bin/mb-device"
workload="${work}/bin/mb-workload"
baseline="${work}/bin/mb-tcp-baseline"
fill="${work}/bin/mb-fill"
vram_bytes="$(python3 -c '
import sys
t = sys.argv[1].strip().upper()
m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
print(int(float(t[:-1]) * m[t[-1]]) if t[-1] in m else int(t))' "${vram}")"

use_netns=0
case "${netns_mode}" in
  1) use_netns=1 ;;
  0) use_netns=0 ;;
  auto) [ "$(id -u)" = 0 ] && command -v ip >/dev/null && use_netns=1 ;;
  *) die "VGPU_MIGRATE_BENCH_NETNS: expected auto, 1 or 0" ;;
esac

echo
echo "==> Machine"
echo "cores:      $(nproc)"
echo "cpu:        $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
echo "memory:     $(free -g | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
echo "os:         $(. /etc/os-release && echo "${PRETTY_NAME}"), kernel $(uname -r)"
echo "date:       $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
echo "busiest:    $(ps -eo pcpu,comm --sort=-pcpu | sed -n '2,4p' | awk '{printf "%s %s%%; ", $2, $1}')"
echo "settings:   VRAM ${vram}, workload ${pps} pages/s, ${repeats} downtime runs," \
  "${tcp_runs} TCP runs per baseline, ports ${port}-$((port + 2)), netns ${use_netns}"
echo "output:     ${out}"
echo "tree:       $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
  "$(git status --porcelain 2>/dev/null | grep -c . || true) changed file(s) in the checkout"
echo "BIN=${bin_dir}"
echo "WORK=${work}"
{
  echo "BIN=${bin_dir}"
  echo "WORK=${work}"
  for i in "${!built[@]}"; do
    echo "\$WORK/bin/${copies[i]} is a copy of \$BIN/${built[i]}"
  done
} | tee -a "${out}/commands.txt" | sed -n '3,$p'

# ---------------------------------------------------------------------------
# One link's measurements. The caller sets: link (a label), addr1, addr2
# (the two hosts' addresses), ns1/ns2 (`ip netns exec NS` prefixes, or
# empty), tls_args (vgpud's --insecure or --tls-dir DIR).

# Appends one JSON object to the results: the fields given as KEY=VALUE
# (numbers stay numbers), merged over a JSON file when FILE is not "-".
record() {
  local file="$1"
  shift
  python3 - "${results}" "${file}" "$@" <<'PY'
import json
import sys

path, src = sys.argv[1], sys.argv[2]
doc = {}
if src != "-":
    with open(src) as f:
        doc = json.load(f)
for kv in sys.argv[3:]:
    k, v = kv.split("=", 1)
    try:
        doc[k] = json.loads(v)
    except ValueError:
        doc[k] = v
with open(path, "a") as f:
    f.write(json.dumps(doc) + "\n")
PY
}

# KEY of a JSON document.
jget() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

start_daemons() {
  local h
  for h in 1 2; do
    mkdir -p "${work}/${link}/s${h}" "${work}/${link}/r${h}"
  done
  # shellcheck disable=SC2086
  bg "${link}-vgpud-host1" ${ns1} "${vgpud}" --host host1 \
    --listen "${addr1}:${port}" --control "${work}/${link}/h1.sock" \
    --store "${work}/${link}/s1" --run-dir "${work}/${link}/r1" \
    --peer "host2=${addr2}:$((port + 1))" --device-binary "${device}" ${tls_args}
  local p1="${bg_pid}"
  # shellcheck disable=SC2086
  bg "${link}-vgpud-host2" ${ns2} "${vgpud}" --host host2 \
    --listen "${addr2}:$((port + 1))" --control "${work}/${link}/h2.sock" \
    --store "${work}/${link}/s2" --run-dir "${work}/${link}/r2" \
    --peer "host1=${addr1}:${port}" --device-binary "${device}" ${tls_args}
  local p2="${bg_pid}"
  wait_socket "${work}/${link}/h1.sock" "${p1}"
  wait_socket "${work}/${link}/h2.sock" "${p2}"
  daemon_pids=("${p1}" "${p2}")
}

stop_daemons() {
  local p
  for p in "${daemon_pids[@]}"; do
    stop_pid "${p}"
    forget_pid "${p}"
  done
}

# tcp_baseline KIND: the baseline runs over this link; KIND is tcp or tls.
tcp_baseline() {
  local kind="$1" i
  shift
  local extra_srv=() extra_cli=()
  if [ "${kind}" = tls ]; then
    extra_srv=(--tls-dir "${tls_dir}" --host host2)
    extra_cli=(--tls-dir "${tls_dir}" --host host1 --peer-name host2)
  fi
  # shellcheck disable=SC2086
  bg "${link}-${kind}-server" ${ns2} "${baseline}" --listen "${addr2}:$((port + 2))" \
    --connections "${tcp_runs}" --json "${extra_srv[@]+"${extra_srv[@]}"}"
  local srv="${bg_pid}"
  for i in $(seq "${tcp_runs}"); do
    # shellcheck disable=SC2086
    run ${ns1} "${baseline}" --connect "${addr2}:$((port + 2))" --bytes "${vram_bytes}" \
      --json "${extra_cli[@]+"${extra_cli[@]}"}" >"${out}/${link}-${kind}-${i}.json" ||
      die "${kind} baseline run ${i} failed"
    cat "${out}/${link}-${kind}-${i}.json"
    record "${out}/${link}-${kind}-${i}.json" link="${link}" test=baseline \
      kind="${kind}" run="${i}"
  done
  wait "${srv}" || die "${kind} baseline server failed (logs/${link}-${kind}-server.log)"
  forget_pid "${srv}"
}

# A source vGPU for VM $1 with VRAM filled as $2 (random | vram);
# $3: extra flags for the fill. Sets dev_pid, dev_sock.
start_source() {
  local vm="$1" pattern="$2"
  shift 2
  dev_sock="${work}/${vm}.sock"
  bg "${vm}-device" "${device}" --socket "${dev_sock}" --vram "${vram}" --name "${vm}-gpu0"
  dev_pid="${bg_pid}"
  wait_socket "${dev_sock}" "${dev_pid}"
  run "${fill}" --socket "${dev_sock}" --pattern "${pattern}" "$@" ||
    die "filling ${vm}'s VRAM failed"
  run "${cli}" --socket "${work}/${link}/h1.sock" register "${vm}" \
    --device "emulation:${dev_sock}" || die "register ${vm} failed"
}

# Migrates VM $1 from host1 to host2 with the extra CLI flags given; the
# CLI's JSON goes to ${out}/VM.json. Sets mig_wall (seconds, the CLI),
# mig_ok (1 if the job is done, else 0: a failed migration is recorded
# and counted, and the run goes on) and mig_parts.
migrate() {
  local vm="$1" t0 t1 rc=0 state
  shift
  t0="${EPOCHREALTIME}"
  run "${cli}" --socket "${work}/${link}/h1.sock" --json "$@" --to host2 "${vm}" \
    >"${out}/${vm}.json" || rc=$?
  t1="${EPOCHREALTIME}"
  mig_t0="${t0}"
  mig_t1="${t1}"
  mig_wall="$(python3 -c "print('%.3f' % (${t1} - ${t0}))")"
  mig_parts=()
  state="$(jget "${out}/${vm}.json" state 2>/dev/null || true)"
  if [ -z "${state}" ]; then
    die "vgpu-migrate gave no job status for ${vm} (exit ${rc}); see logs/${link}-vgpud-host1.log"
  fi
  if [ "${rc}" -ne 0 ] || [ "${state}" != "done" ]; then
    mig_ok=0
    failures=$((failures + 1))
    echo "   MIGRATION FAILED (exit ${rc}, state ${state}): $(jget "${out}/${vm}.json" error 2>/dev/null || true)"
    return 0
  fi
  mig_ok=1
  # From vgpud's log (fields left out if its lines change): the time to
  # prepare the destination (begin to "destination ready": starting the
  # device model and faulting in its VRAM), the transfer (from then to
  # done: pre-copy, stop-copy, finish, confirm), and vgpud's split of the
  # downtime (final copy, the destination's finish, the confirm).
  local parts
  parts="$(python3 - "${out}/logs/${link}-vgpud-host1.log" "${vm}" <<'PY'
import datetime
import re
import sys

vm = sys.argv[2]
stamp = {}
split = None
for line in open(sys.argv[1]):
    if " vm=%s: " % vm not in line:
        continue
    t = datetime.datetime.strptime(line.split(" ", 1)[0],
                                   "%Y-%m-%dT%H:%M:%S.%f").timestamp()
    for key, text in (("begin", ": begin:"), ("ready", ": prepare: destination ready"),
                      ("done", ": done:")):
        if text in line:
            stamp[key] = t
    m = re.search(r"final copy ([0-9.]+) ms, finish ([0-9.]+) ms, "
                  r"confirm ([0-9.]+) ms", line)
    if m:
        split = m.groups()
out = []
if "begin" in stamp and "ready" in stamp and "done" in stamp:
    out.append("prepareSeconds=%.3f" % (stamp["ready"] - stamp["begin"]))
    out.append("transferSeconds=%.3f" % (stamp["done"] - stamp["ready"]))
if split:
    out += ["finalCopyMs=%s" % split[0], "finishMs=%s" % split[1],
            "confirmMs=%s" % split[2]]
print(" ".join(out))
PY
)" || parts=""
  if [ -n "${parts}" ]; then read -r -a mig_parts <<<"${parts}"; fi
  python3 - "${out}/${vm}.json" "${mig_wall}" <<'PY'
import json
import sys
j = json.load(open(sys.argv[1]))
print("   %s: %d rounds, %.1f MiB of state as %.1f MiB on the wire in %.2f s "
      "(CLI %s s), downtime %.1f ms" % (
          j["id"], len(j["pendingAfterRound"]), j["rawBytes"] / 2**20,
          j["wireBytes"] / 2**20, j["totalSeconds"], sys.argv[2],
          j["downtimeMs"]))
PY
}

# The destination's endpoint for VM $1.
dest_endpoint() {
  "${cli}" --socket "${work}/${link}/h2.sock" --json list | python3 -c '
import json, sys
vm = sys.argv[1]
for v in json.load(sys.stdin):
    if v["name"] == vm:
        print(v["devices"][0]["endpoint"])
        break' "$1"
}

# Frees VM $1 where it now is (host2 after a migration, host1 after a
# failed one) and stops the source device.
finish_vm() {
  local vm="$1" where="h2"
  [ "${mig_ok}" = 1 ] || where="h1"
  run "${cli}" --socket "${work}/${link}/${where}.sock" unregister "${vm}" >/dev/null ||
    die "unregister ${vm} on ${where/h/host} failed"
  stop_pid "${dev_pid}"
  forget_pid "${dev_pid}"
  rm -f "${dev_sock}"
}

throughput_case() {
  local pattern="$1" compress="$2"
  local vm="${link}-${pattern}-${compress}"
  local flags=()
  [ "${compress}" = off ] && flags=(--no-compress)
  echo
  echo "--- ${link}: throughput, ${pattern} VRAM, compression ${compress}"
  start_source "${vm}" "${pattern}"
  migrate "${vm}" "${flags[@]+"${flags[@]}"}"
  record "${out}/${vm}.json" link="${link}" test=throughput data="${pattern}" \
    compress="${compress}" vramBytes="${vram_bytes}" cliSeconds="${mig_wall}" \
    "${mig_parts[@]+"${mig_parts[@]}"}"
  finish_vm "${vm}"
}

# The dirty rate the workload reached while the source was live: its
# completed pages from its last progress line before the migration began
# to its last line before the migration ended plus 1.5 s (it prints one a
# second while it runs; it stops when the source stops). Lines carry the
# shell's clock.
dirty_rate() {
  python3 - "$1" "${mig_t0}" "${mig_t1}" <<'PY'
import re
import sys

t0, t1 = float(sys.argv[2]), float(sys.argv[3])
pts = []
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (?:end: )?pages (\d+)", line)
    if m:
        pts.append((float(m.group(1)), int(m.group(2))))
before = [p for p in pts if p[0] <= t0]
after = [p for p in pts if p[0] > t0 and p[0] <= t1 + 1.5]
if not before or not after:
    print("0")
else:
    (a, pa), (b, pb) = before[-1], after[-1]
    print("%.1f" % ((pb - pa) * 4096 / 2**20 / (b - a)))
PY
}

downtime_case() {
  local i="$1"
  local vm="${link}-dirty-${i}"
  echo
  echo "--- ${link}: downtime run ${i}/${repeats}, workload at ${pps} pages/s"
  start_source "${vm}" vram --seed "${i}" --zero-heads
  local wlog="${out}/logs/${vm}-workload.log"
  show "${workload}" --socket "${dev_sock}" --pages-per-second "${pps}"
  echo "  (in the background, output in logs/${vm}-workload.log)" >&2
  # Each progress line is stamped with the shell's clock as it arrives.
  "${workload}" --socket "${dev_sock}" --pages-per-second "${pps}" \
    > >(while IFS= read -r l; do echo "${EPOCHREALTIME} ${l}"; done >"${wlog}") 2>&1 &
  local wl="$!"
  pids+=("${wl}")
  sleep 3  # let it reach its rate
  kill -0 "${wl}" 2>/dev/null || die "the workload on ${vm} exited: $(tail -3 "${wlog}")"
  migrate "${vm}"
  sleep 1.2  # one more progress line after the migration
  stop_pid "${wl}"
  forget_pid "${wl}"
  local rate
  rate="$(dirty_rate "${wlog}")"
  # The migrated counters must hold the workload's invariant, and the
  # workload must carry on at the destination.
  local ep check=n/a
  if [ "${mig_ok}" = 1 ]; then
    ep="$(dest_endpoint "${vm}")"
    [ -n "${ep}" ] || die "${vm} is not listed on host2 after the migration"
    check=ok
    show "${workload}" --socket "${ep}" --duration 1
    if ! "${workload}" --socket "${ep}" --duration 1 >"${out}/logs/${vm}-check.log" 2>&1; then
      check=BAD
      failures=$((failures + 1))
      echo "   COUNTER CHECK FAILED on the destination: $(tail -n1 "${out}/logs/${vm}-check.log")"
    fi
    grep -E '^(start|end):' "${out}/logs/${vm}-check.log" | sed 's/^/   destination: /' || true
  fi
  record "${out}/${vm}.json" link="${link}" test=downtime run="${i}" \
    vramBytes="${vram_bytes}" targetPagesPerSec="${pps}" dirtyMiBps="${rate}" \
    counters="${check}" cliSeconds="${mig_wall}" "${mig_parts[@]+"${mig_parts[@]}"}"
  finish_vm "${vm}"
}

suite() {
  echo
  echo "==> ${link}: vgpud host1 at ${addr1}:${port}, host2 at ${addr2}:$((port + 1))"
  start_daemons
  echo
  echo "--- ${link}: raw TCP baseline, ${tcp_runs} x ${vram_bytes} bytes"
  tcp_baseline tcp
  if [ -n "${tls_dir}" ]; then
    echo
    echo "--- ${link}: TLS baseline (kj-tls, vgpud's context), ${tcp_runs} x ${vram_bytes} bytes"
    tcp_baseline tls
  fi
  throughput_case random off
  throughput_case random on
  throughput_case vram off
  throughput_case vram on
  local i
  for i in $(seq "${repeats}"); do downtime_case "${i}"; done
  stop_daemons
}

# ---------------------------------------------------------------------------
link=loopback addr1=127.0.0.1 addr2=127.0.0.1 ns1="" ns2="" tls_args=--insecure tls_dir=""
suite

if [ "${use_netns}" = 1 ]; then
  nsa="vmbench$$a" nsb="vmbench$$b"
  echo
  echo "==> veth: namespaces ${nsa} (10.78.0.1) and ${nsb} (10.78.0.2)"
  run ip netns add "${nsa}"
  namespaces+=("${nsa}")
  run ip netns add "${nsb}"
  namespaces+=("${nsb}")
  run ip link add "vmb$$a" type veth peer name "vmb$$b"
  run ip link set "vmb$$a" netns "${nsa}"
  run ip link set "vmb$$b" netns "${nsb}"
  run ip -n "${nsa}" addr add 10.78.0.1/24 dev "vmb$$a"
  run ip -n "${nsb}" addr add 10.78.0.2/24 dev "vmb$$b"
  for ns in "${nsa}" "${nsb}"; do
    run ip -n "${ns}" link set lo up
  done
  run ip -n "${nsa}" link set "vmb$$a" up
  run ip -n "${nsb}" link set "vmb$$b" up
  tls_dir="${work}/tls"
  run "${cli}" certs "${tls_dir}" host1 host2
  link=veth addr1=10.78.0.1 addr2=10.78.0.2
  ns1="ip netns exec ${nsa}" ns2="ip netns exec ${nsb}"
  tls_args="--tls-dir ${tls_dir}"
  suite
fi
echo
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (after the run)"

# ---------------------------------------------------------------------------
echo
echo "==> Summary"
python3 - "${results}" <<'PY'
import json
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
MIB = float(1 << 20)


def table(header, body):
    cols = [header] + body
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(r, widths))) + " |"
    print(line(header))
    print("|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":")
                         for i, w in enumerate(widths)) + "|")
    for r in body:
        print(line(r))
    print()


def split(r):
    if "finalCopyMs" not in r:
        return "n/a"
    return "%.1f / %.1f / %.1f" % (r["finalCopyMs"], r["finishMs"],
                                   r["confirmMs"])


def ok(r):
    return r.get("state") == "done"


def fmt(v, spec):
    return "n/a" if v is None else spec % v


def failed_row(label, r, width):
    return [label, "FAILED: %s" % r.get("errorCode", r.get("state", "?"))] + \
        [""] * (width - 2)


def errors(rs):
    for r in rs:
        if not ok(r):
            print("  %s (%s) failed after %.2f s, source resumed: %s; %s"
                  % (r["vm"], r["id"], r.get("totalSeconds", 0),
                     r.get("sourceResumed"), r.get("error", "")))
    if any(not ok(r) for r in rs):
        print()


links = []
for r in rows:
    if r["link"] not in links:
        links.append(r["link"])

for link in links:
    base = {}
    for kind in ("tcp", "tls"):
        rates = [r["bytesPerSec"] for r in rows
                 if r["link"] == link and r["test"] == "baseline"
                 and r["kind"] == kind]
        if rates:
            base[kind] = (statistics.median(rates), min(rates), max(rates),
                          len(rates))
    # Migrations over TLS are compared with the TLS baseline.
    ref_kind = "tls" if "tls" in base else "tcp"
    ref = base[ref_kind][0]
    print("%s: baselines, one connection (median of the runs; min-max)" % link)
    table(["baseline", "runs", "MiB/s", "min", "max"],
          [[k, str(v[3]), "%.0f" % (v[0] / MIB), "%.0f" % (v[1] / MIB),
            "%.0f" % (v[2] / MIB)] for k, v in base.items()])

    tp = [r for r in rows if r["link"] == link and r["test"] == "throughput"]
    print("%s: throughput, idle vGPU, against the %s baseline (%.0f MiB/s). "
          "total = totalSeconds (job begin to done); prepare = begin to "
          "'destination ready' (device model started, its VRAM faulted in); "
          "transfer = the rest (pre-copy, stop-copy, finish, confirm)"
          % (link, ref_kind, ref / MIB))
    header = ["VRAM data", "state MiB", "wire MiB", "raw/wire", "total s",
              "prepare s", "transfer s", "state MiB/s, total", "/ link",
              "state MiB/s, transfer", "/ link", "wire MiB/s, transfer",
              "/ link", "rounds", "downtime ms", "copy / finish / confirm ms"]
    body = []
    for r in tp:
        label = "%s, compress %s" % (r["data"], r["compress"])
        if not ok(r):
            body.append(failed_row(label, r, len(header)))
            continue
        total = r["rawBytes"] / r["totalSeconds"]
        xfer = r.get("transferSeconds")
        body.append([
            label,
            "%.1f" % (r["rawBytes"] / MIB), "%.1f" % (r["wireBytes"] / MIB),
            "%.2f" % (r["rawBytes"] / max(r["wireBytes"], 1)),
            "%.2f" % r["totalSeconds"], fmt(r.get("prepareSeconds"), "%.2f"),
            fmt(xfer, "%.2f"),
            "%.0f" % (total / MIB), "%.3fx" % (total / ref),
            fmt(xfer and r["rawBytes"] / xfer / MIB, "%.0f"),
            fmt(xfer and r["rawBytes"] / xfer / ref, "%.3fx"),
            fmt(xfer and r["wireBytes"] / xfer / MIB, "%.0f"),
            fmt(xfer and r["wireBytes"] / xfer / ref, "%.3fx"),
            str(len(r["pendingAfterRound"])), "%.1f" % r["downtimeMs"],
            split(r)])
    table(header, body)
    errors(tp)

    dt = [r for r in rows if r["link"] == link and r["test"] == "downtime"]
    if not dt:
        continue
    print("%s: downtime, VRAM-like bytes, compression on, counter workload "
          "at %.0f MiB/s; link time = wireBytes / %s baseline"
          % (link, dt[0]["targetPagesPerSec"] * 4096 / MIB, ref_kind))
    header = ["run", "dirty MiB/s", "rounds", "pending KiB after each round",
              "downtime ms", "copy / finish / confirm ms", "state MiB",
              "wire MiB", "total s", "prepare s", "transfer s", "link time s",
              "total / link time", "transfer / link time", "counters"]
    body = []
    for r in dt:
        if not ok(r):
            body.append(failed_row("#%d" % r["run"], r, len(header)))
            continue
        link_s = r["wireBytes"] / ref
        xfer = r.get("transferSeconds")
        body.append([
            "#%d" % r["run"], "%.1f" % r["dirtyMiBps"],
            str(len(r["pendingAfterRound"])),
            " ".join("%.0f" % (p / 1024.0) for p in r["pendingAfterRound"]),
            "%.1f" % r["downtimeMs"], split(r),
            "%.1f" % (r["rawBytes"] / MIB),
            "%.1f" % (r["wireBytes"] / MIB), "%.2f" % r["totalSeconds"],
            fmt(r.get("prepareSeconds"), "%.2f"), fmt(xfer, "%.2f"),
            "%.2f" % link_s, "%.1fx" % (r["totalSeconds"] / link_s),
            fmt(xfer and xfer / link_s, "%.1fx"), r["counters"]])
    good = [r for r in dt if ok(r)]
    if good:
        med = lambda f: statistics.median(f(r) for r in good)
        has_x = all("transferSeconds" in r for r in good)
        body.append([
            "median of %d" % len(good), "%.1f" % med(lambda r: r["dirtyMiBps"]),
            "%g" % med(lambda r: len(r["pendingAfterRound"])), "",
            "%.1f" % med(lambda r: r["downtimeMs"]), "",
            "%.1f" % med(lambda r: r["rawBytes"] / MIB),
            "%.1f" % med(lambda r: r["wireBytes"] / MIB),
            "%.2f" % med(lambda r: r["totalSeconds"]),
            "%.2f" % med(lambda r: r["prepareSeconds"]) if has_x else "n/a",
            "%.2f" % med(lambda r: r["transferSeconds"]) if has_x else "n/a",
            "%.2f" % med(lambda r: r["wireBytes"] / ref),
            "%.1fx" % med(lambda r: r["totalSeconds"] / (r["wireBytes"] / ref)),
            "%.1fx" % med(lambda r: r["transferSeconds"] / (r["wireBytes"] / ref))
            if has_x else "n/a", ""])
    table(header, body)
    errors(dt)
PY
echo "Results: ${results} (one JSON object per line); commands: ${out}/commands.txt"
if [ "${failures}" -ne 0 ]; then
  die "${failures} migration(s) failed or left wrong counters (see above)"
fi
