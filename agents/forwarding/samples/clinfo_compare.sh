#!/bin/bash
# clinfo_compare.sh: runs clinfo natively and with the given environment and
# diffs the two, ignoring only the lines that carry the platform's name (the
# forwarding library names its platform itself; everything else it reports,
# devices included, must be the host platform's).
#
#   clinfo_compare.sh [--clinfo PATH] [VAR=VALUE...]
#
# "Natively" is the system's ICDs: OCL_ICD_VENDORS and OCL_ICD_FILENAMES are
# removed. The other run gets VAR=VALUE added (e.g.
# OCL_ICD_VENDORS=/path/to/vendors-dir holding the library's .icd file); with
# none, it is a second native run, which proves the comparison itself.
#
# Prints "clinfo: identical apart from the platform name" and exits 0, or
# "clinfo: differs" and the differing lines (diff -u, native first) and exits
# 1; exits 2 when clinfo cannot be run.
set -uo pipefail

clinfo=clinfo
if [[ "${1:-}" == --clinfo ]]; then
  clinfo="${2:?--clinfo needs a path}"
  shift 2
fi
for kv in "$@"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || {
    echo "clinfo_compare.sh: expected VAR=VALUE, got '$kv'" >&2
    exit 2
  }
done
command -v "$clinfo" >/dev/null || {
  echo "clinfo_compare.sh: $clinfo not found (apt-get install clinfo)" >&2
  exit 2
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The platform name lines: "Platform Name   <name>" (platform and device
# sections and the NULL-platform section) and the NULL-platform query
# "clGetPlatformInfo(NULL, CL_PLATFORM_NAME, ...)  <name>". The label and
# its padding stay; only the value is replaced.
normalize() {
  sed -E \
    -e 's/^([[:space:]]*Platform Name[[:space:]]+).*/\1<platform name>/' \
    -e 's/^([[:space:]]*clGetPlatformInfo\(NULL, CL_PLATFORM_NAME, \.\.\.\)[[:space:]]+).*/\1<platform name>/'
}

env -u OCL_ICD_VENDORS -u OCL_ICD_FILENAMES "$clinfo" >"$tmp/native.raw" 2>&1 || {
  echo "clinfo_compare.sh: native clinfo failed:" >&2
  cat "$tmp/native.raw" >&2
  exit 2
}
env "$@" "$clinfo" >"$tmp/other.raw" 2>&1 || {
  echo "clinfo_compare.sh: clinfo with $* failed:" >&2
  cat "$tmp/other.raw" >&2
  exit 2
}
normalize <"$tmp/native.raw" >"$tmp/native"
normalize <"$tmp/other.raw" >"$tmp/other"
label="with ${*:-no changes}"
if diff -u --label native --label "$label" "$tmp/native" "$tmp/other" >"$tmp/diff"; then
  echo "clinfo: identical apart from the platform name"
  exit 0
fi
echo "clinfo: differs"
cat "$tmp/diff"
exit 1
