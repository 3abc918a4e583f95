#!/bin/bash
# vfio_probe_test: runs vgpu-vfio-probe ($1) on a fake sysfs tree (laid out
# like the kernel's: devices/ plus bus/ symlinks) and a dev root without
# vfio, in text and JSON form, and checks what it says; then a scan error
# (exit 1) and --help (exit 0). Single process, files under TEST_TMPDIR.
set -euo pipefail

probe="$1"
root="${TEST_TMPDIR:-/tmp}/probe"
rm -rf "$root"
sys="$root/sys"
dev="$root/dev"
mkdir -p "$sys/bus/pci/devices" "$dev"

fail() { echo "FAIL: $*" >&2; exit 1; }

add_pci() {  # addr vendor device class driver group
  local d="$sys/devices/pci0000:00/$1"
  mkdir -p "$d"
  printf '%s\n' "$2" >"$d/vendor"
  printf '%s\n' "$3" >"$d/device"
  printf '%s\n' "$4" >"$d/class"
  if [[ -n "$5" ]]; then
    mkdir -p "$sys/bus/pci/drivers/$5"
    ln -s "../../../bus/pci/drivers/$5" "$d/driver"
  fi
  if [[ -n "$6" ]]; then
    mkdir -p "$sys/kernel/iommu_groups/$6"
    ln -s "../../../kernel/iommu_groups/$6" "$d/iommu_group"
  fi
  ln -s "../../../devices/pci0000:00/$1" "$sys/bus/pci/devices/$1"
}

add_pci 0000:3b:00.0 0x10de 0x2330 0x030200 vfio-pci 42
add_pci 0000:5e:00.1 0x15b3 0x101e 0x020000 mlx5_vfio_pci 43
add_pci 0000:af:00.0 0x10de 0x1eb8 0x030200 nvidia 44
add_pci 0000:00:1f.0 0x8086 0xa1c8 0x060100 "" ""   # not a GPU: not listed

uuid=c0a8b5e6-0d5e-4a3f-9a4a-1d2d3e4f5a6b
parent="$sys/devices/pci0000:00/0000:af:00.0"
mkdir -p "$parent/mdev_supported_types/nvidia-63" "$parent/$uuid" \
  "$sys/bus/mdev/devices"
echo "GRID T4-2Q" >"$parent/mdev_supported_types/nvidia-63/name"
ln -s ../mdev_supported_types/nvidia-63 "$parent/$uuid/mdev_type"
ln -s "../../../devices/pci0000:00/0000:af:00.0/$uuid" \
  "$sys/bus/mdev/devices/$uuid"

out="$("$probe" --sys-root "$sys" --dev-root "$dev")" ||
  fail "text scan exited $?"
echo "$out"
expect() { grep -qF -- "$1" <<<"$out" || fail "output lacks: $1"; }
expect "this host has no $dev/vfio (vfio modules not loaded)"
expect "the mediated agent runs against the reference device only"
expect "PCI functions: 4 scanned, 3 display controllers or vfio-bound"
expect "0000:3b:00.0"
expect "driver vfio-pci, IOMMU group 42, vfio-bound yes, migration no"
expect "driver vfio-pci offers no migration"
expect "0000:5e:00.1"
expect "driver mlx5_vfio_pci, IOMMU group 43, vfio-bound yes, migration yes"
expect "not probed: $dev/vfio missing"
expect "driver nvidia, IOMMU group 44, vfio-bound no, migration no"
expect "$uuid  type nvidia-63 (GRID T4-2Q)  parent 0000:af:00.0"
if grep -qF "0000:00:1f.0" <<<"$out"; then
  fail "listed a function that is neither a GPU nor vfio-bound"
fi

out="$("$probe" --json --sys-root "$sys" --dev-root "$dev")" ||
  fail "JSON scan exited $?"
echo "$out"
expect '"present": false'
expect '"address": "0000:5e:00.1"'
expect '"driver": "mlx5_vfio_pci"'
expect '"migration_capable": true'
expect '"vfio_bound": true'
expect '"class": "0x030200"'
expect '"type_name": "GRID T4-2Q"'
expect "\"note\": \"this host has no $dev/vfio"

set +e
err="$("$probe" --sys-root "$root/nowhere" --dev-root "$dev" 2>&1)"
rc=$?
set -e
[[ $rc -eq 1 ]] || fail "a missing sysfs exited $rc, want 1"
grep -qF "$root/nowhere/bus/pci/devices" <<<"$err" ||
  fail "the scan error does not name the path: $err"

"$probe" --help | grep -qF -- "--dev-root" || fail "--help lacks --dev-root"
echo PASS
