#!/bin/bash
# samples_test: the fidelity samples natively (PoCL through the ICD loader).
#   - every sample runs twice through fidelity.sh --native, the first time
#     with an empty PoCL kernel cache, the second with a warm one; the digests
#     must be equal (fidelity.sh compare says SAME for all)
#   - each sample reaches its last step (steps N as --list says), build_errors
#     has a non-empty log, error_codes observed every expected code
#   - --json gives the same digest as the text output
#   - the pause protocol: paused after step 1 (events' step 1 leaves commands
#     held by a user event), resumed through the pause file, same digests
#   - clinfo_compare.sh: native against native is identical; a fake clinfo
#     shows that only the platform name lines are ignored
# Native only: the forwarded comparison (fidelity.sh --env ...) is added by
# the integration tests once libvgpu-opencl.so exists.
#
# Arguments: vgpu-cl-samples, fidelity.sh, clinfo_compare.sh.
set -euo pipefail

bin="$1"
fidelity="$2"
clinfo_compare="$3"
tmp="${TEST_TMPDIR:-$(mktemp -d)}/samples"
rm -rf "$tmp"
mkdir -p "$tmp"
# A fresh kernel cache, so that run 1 compiles everything and run 2 hits the
# cache: the digests must not depend on it.
export POCL_CACHE_DIR="$tmp/pocl-cache"

fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== --list"
"$bin" --list | tee "$tmp/list"
declare -A steps=()
while read -r name _ n _; do steps[$name]="$n"; done <"$tmp/list"
((${#steps[@]} == 9)) || fail "expected 9 samples in --list, got ${#steps[@]}"

echo "== run 1 (text), cold kernel cache"
rc=0
"$bin" all >"$tmp/text1" 2>"$tmp/text1.err" || rc=$?
if ((rc != 0)); then
  cat "$tmp/text1" "$tmp/text1.err" >&2
  fail "vgpu-cl-samples all exited $rc"
fi
cat "$tmp/text1"
for name in "${!steps[@]}"; do
  line="$(grep "^SAMPLE $name " "$tmp/text1")" || fail "no SAMPLE line for $name"
  [[ "$line" =~ ^SAMPLE\ $name\ digest\ [0-9a-f]{16}\ steps\ ([0-9]+) ]] ||
    fail "malformed line: $line"
  [[ "${BASH_REMATCH[1]}" == "${steps[$name]}" ]] ||
    fail "$name ended after ${BASH_REMATCH[1]} of ${steps[$name]} steps"
done
grep -E "^SAMPLE build_errors .* log_bytes [1-9][0-9]* " "$tmp/text1" >/dev/null ||
  fail "build_errors has an empty build log"
grep -E "^  build_errors: log: error: <source>:3:11: expected expression" \
  "$tmp/text1" >/dev/null || fail "build_errors' log lacks the syntax error"
line="$(grep "^SAMPLE error_codes " "$tmp/text1")"
[[ "$line" =~ cases\ ([0-9]+)\ matched\ ([0-9]+) ]] ||
  fail "error_codes line lacks cases/matched: $line"
[[ "${BASH_REMATCH[1]}" == "${BASH_REMATCH[2]}" && "${BASH_REMATCH[1]}" -ge 25 ]] ||
  fail "error_codes: ${BASH_REMATCH[2]} of ${BASH_REMATCH[1]} codes as expected"
for code in CL_INVALID_BUFFER_SIZE CL_INVALID_VALUE CL_INVALID_ARG_INDEX \
  CL_INVALID_KERNEL_ARGS CL_INVALID_WORK_GROUP_SIZE; do
  grep -E "^  error_codes: .* observed $code \(-[0-9]+\) ok$" "$tmp/text1" >/dev/null ||
    fail "error_codes did not observe $code"
done
if grep -q MISMATCH "$tmp/text1"; then fail "error_codes has mismatches"; fi

echo "== fidelity.sh --native, twice (warm kernel cache)"
"$fidelity" --binary "$bin" --native >"$tmp/run1" 2>"$tmp/run1.err" ||
  { cat "$tmp/run1.err" >&2; fail "fidelity.sh run 1"; }
"$fidelity" --binary "$bin" --native >"$tmp/run2" 2>"$tmp/run2.err" ||
  { cat "$tmp/run2.err" >&2; fail "fidelity.sh run 2"; }
# The text run above was the cold-cache one; its digests join the comparison.
awk '$1 == "SAMPLE" && $3 == "digest" {print $2, $4}' "$tmp/text1" >"$tmp/run0"
cat "$tmp/run1"
"$fidelity" compare "$tmp/run0" "$tmp/run1" | tee "$tmp/cmp01"
"$fidelity" compare "$tmp/run1" "$tmp/run2" | tee "$tmp/cmp12"
[[ "$(grep -c ' SAME$' "$tmp/cmp01")" == 9 && "$(grep -c ' SAME$' "$tmp/cmp12")" == 9 ]] ||
  fail "digests differ between native runs"

echo "== compare notices a difference"
sed '1s/ [0-9a-f]*$/ 0000000000000000/' "$tmp/run1" >"$tmp/run1.bad"
if "$fidelity" compare "$tmp/run1" "$tmp/run1.bad" >"$tmp/cmpbad" 2>/dev/null; then
  fail "compare exited 0 for a changed digest"
fi
grep -q "^FIDELITY vector_add DIFFERENT$" "$tmp/cmpbad" || fail "compare missed it"

echo "== --json"
"$bin" --json vector_add error_codes >"$tmp/json" 2>/dev/null || fail "--json run"
cat "$tmp/json"
for name in vector_add error_codes; do
  digest="$(awk -v n="$name" '$1 == n {print $2}' "$tmp/run1")"
  grep -F "\"sample\":\"$name\"" "$tmp/json" | grep -F "\"digest\":\"$digest\"" >/dev/null ||
    fail "--json digest of $name is not $digest"
done

echo "== pause after step 1"
go="$tmp/go"
"$bin" --pause-at 1 --pause-file "$go" vector_add events >"$tmp/paused" 2>"$tmp/paused.err" &
pid=$!
for name in vector_add events; do
  for _ in $(seq 600); do
    grep -q "^PAUSED $name step 1$" "$tmp/paused" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "^PAUSED $name step 1$" "$tmp/paused" || {
    kill "$pid" 2>/dev/null || true
    cat "$tmp/paused" "$tmp/paused.err" >&2
    fail "no PAUSED line for $name"
  }
  # Still paused: the next sample has not started.
  sleep 0.3
  if grep -q "^SAMPLE $name " "$tmp/paused"; then fail "$name went on without the pause file"; fi
  touch "$go"
done
wait "$pid" || { cat "$tmp/paused" "$tmp/paused.err" >&2; fail "paused run exited $?"; }
[[ ! -e "$go" ]] || fail "the pause file was not deleted"
cat "$tmp/paused"
for name in vector_add events; do
  digest="$(awk -v n="$name" '$1 == n {print $2}' "$tmp/run1")"
  grep -q "^SAMPLE $name digest $digest steps ${steps[$name]} " "$tmp/paused" ||
    fail "$name's digest after a pause is not $digest"
done

echo "== clinfo_compare.sh"
"$clinfo_compare" | tee "$tmp/clinfo"
grep -qx "clinfo: identical apart from the platform name" "$tmp/clinfo" ||
  fail "native clinfo against native"
# A fake clinfo whose platform name, or another line, follows the environment.
fake="$tmp/fake-clinfo"
cat >"$fake" <<'FAKE'
#!/bin/bash
echo "Number of platforms                               1"
echo "  Platform Name                                   ${FAKE_NAME:-Native}"
echo "  Platform Vendor                                 ${FAKE_VENDOR:-The vendor}"
echo "  clGetPlatformInfo(NULL, CL_PLATFORM_NAME, ...)  ${FAKE_NAME:-Native}"
FAKE
chmod +x "$fake"
"$clinfo_compare" --clinfo "$fake" FAKE_NAME=vGPU >"$tmp/fake1" ||
  { cat "$tmp/fake1" >&2; fail "a different platform name alone must be ignored"; }
if "$clinfo_compare" --clinfo "$fake" FAKE_NAME=vGPU FAKE_VENDOR=Other >"$tmp/fake2"; then
  fail "a different vendor line must be reported"
fi
grep -q "^+  Platform Vendor  *Other$" "$tmp/fake2" || fail "the vendor line is not shown"
if grep -q "Platform Name" <(grep '^[-+] ' "$tmp/fake2"); then
  fail "the platform name lines must not be reported"
fi

echo "PASS"
