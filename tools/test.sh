#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, builds
# everything, runs every test target, runs each fuzz target for a bounded
# time, and ends with "N passed, N failed" counted from the real results.
# Usage: tools/test.sh [FUZZ_SECONDS_PER_TARGET]   (default 20; 0 skips fuzzing)
set -uo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds="${1:-20}"

say() { printf '\n== %s\n' "$*"; }

say "setup"
tools/setup.sh || exit 1

log="$(mktemp /tmp/vgpu-test.XXXXXX.log)"
# A disk cache shared by every clone on this machine keeps CI runs warm.
cache_flags=(--disk_cache="$HOME/.cache/vgpu-migrate/bazel-disk")

say "build and test (bazel test //...; GPU tests are excluded: this machine has no GPU)"
# --nocache_test_results: every test really runs; only builds are cached.
bazel test "${cache_flags[@]}" --nocache_test_results --test_summary=short \
  --test_output=errors \
  --test_tag_filters=-gpu --build_tests_only=false //... 2>&1 | tee "$log" \
  | grep -vE 'linux-sandbox|^\s+\(cd |^\s+exec env|^\s+PATH='
bazel_rc=${PIPESTATUS[0]}

if [ "$fuzz_seconds" != "0" ]; then
  say "fuzz each decoder for ${fuzz_seconds}s (libFuzzer + AddressSanitizer)"
  tools/fuzz.sh "$fuzz_seconds" 2>&1 | tee -a "$log" | grep -E '^(FUZZ|fuzz:)' || true
else
  echo "fuzzing skipped: FUZZ_SECONDS_PER_TARGET is 0" | tee -a "$log"
fi


say "libvirt: the hook under real libvirtd and guests (tests/libvirt/hook_e2e.sh, migrate_e2e.sh)"
# Needs root (namespaces, libvirtd) and a few Debian packages. Where they
# cannot run they say why and count as neither passed nor failed.
if [ "$(id -u)" != 0 ]; then
  echo "LIBVIRT hook_e2e SKIPPED: needs root (libvirtd, mount namespaces)" | tee -a "$log"
  echo "LIBVIRT migrate_e2e SKIPPED: needs root (libvirtd, network namespaces)" | tee -a "$log"
elif ! tests/libvirt/setup_packages.sh >/tmp/vgpu-libvirt-setup.log 2>&1; then
  echo "LIBVIRT hook_e2e SKIPPED: could not install libvirt/qemu (see /tmp/vgpu-libvirt-setup.log)" | tee -a "$log"
  echo "LIBVIRT migrate_e2e SKIPPED: could not install libvirt/qemu" | tee -a "$log"
else
  # The guests run under KVM where /dev/kvm exists, else under QEMU's TCG;
  # the result line says which.
  accel="KVM"
  [ -c /dev/kvm ] || accel="TCG: this machine has no /dev/kvm"
  for t in hook_e2e migrate_e2e; do
    libvirt_log=/tmp/vgpu-libvirt-$t.log
    if BIN="$(bazel info bazel-bin 2>/dev/null)" "tests/libvirt/$t.sh" >"$libvirt_log" 2>&1; then
      grep -E 'WARNING|said|followed|figures|gave up|PASS' "$libvirt_log" | cut -c1-220 | sed 's/^/  /'
      echo "LIBVIRT $t PASS (guest under $accel)" | tee -a "$log"
    else
      tail -n 25 "$libvirt_log" | sed 's/^/  /'
      echo "LIBVIRT $t FAIL (see $libvirt_log)" | tee -a "$log"
    fi
  done
fi
say "results"
python3 tools/count_tests.py "$log"
count_rc=$?
if [ "$bazel_rc" -ne 0 ] && [ "$count_rc" -eq 0 ]; then
  echo "bazel exited with $bazel_rc although no test failed (a build error?); see $log"
  echo "0 passed, 1 failed"
  exit 1
fi
exit "$count_rc"
