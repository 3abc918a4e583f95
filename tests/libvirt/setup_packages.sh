#!/usr/bin/env bash
# Installs the Debian 12 packages the libvirt test environment needs.
# Idempotent and quiet; prints what it installed and the download size apt
# reported. The guest kernel is NOT installed here (make_guest.sh fetches the
# linux-image .deb with `apt-get download` and extracts it with dpkg-deb).
set -euo pipefail

# Smallest set found to work (no libvirt-daemon-system: it only adds the
# systemd units, polkit, the default network and the libvirt-qemu user setup,
# none of which these tests use):
#   libvirt-daemon              libvirtd itself
#   libvirt-daemon-driver-qemu  the qemu/kvm driver (libvirt_driver_qemu.so)
#   libvirt-clients             virsh
#   qemu-system-x86             qemu-system-x86_64 (pulls seabios, ipxe-qemu,
#                               qemu-system-data for linuxboot_dma.bin)
#   busybox-static              the guest's whole userland (also makes the cpio)
PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
          qemu-system-x86 busybox-static)

if [[ $EUID -ne 0 ]]; then
  echo "setup_packages.sh: must run as root" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup_packages.sh: all ${#PACKAGES[@]} packages already installed: ${PACKAGES[*]}"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh lists only if the packages are unknown to apt.
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
  apt-get update -qq
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s.%N)
if ! apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
  echo "setup_packages.sh: FAILED: apt-get install ${missing[*]}" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
end=$(date +%s.%N)

n_new=$(grep -c '^Setting up ' "$log" || true)
echo "setup_packages.sh: requested: ${missing[*]}"
echo "setup_packages.sh: packages newly set up (incl. dependencies): $n_new"
grep -E '^Need to get|^After this operation' "$log" | sed 's/^/setup_packages.sh: apt: /' || true
awk -v a="$start" -v b="$end" 'BEGIN{printf "setup_packages.sh: took %.1f s\n", b-a}'
