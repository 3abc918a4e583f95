#!/usr/bin/env bash
# make_guest.sh OUT_DIR
#
# Builds a tiny guest for the libvirt tests:
#   OUT_DIR/vmlinuz            kernel from Debian's linux-image-cloud-amd64 .deb
#                              (fetched with `apt-get download`, extracted with
#                              dpkg-deb; never installed into the system)
#   OUT_DIR/initramfs.cpio.gz  busybox-static userland whose /init mounts
#                              proc/sys/dev, prints "vgpu-guest: up" on the
#                              serial console, then prints
#                              "vgpu-guest: tick N" once a second forever.
# The guest needs no kernel modules: it uses only the 8250 UART (ttyS0),
# which both Debian kernels build in. No disks, no network.
#
# The extracted kernel is cached (OUT_DIR/vmlinuz + OUT_DIR/kernel-cache/kernel.pkg); a second run only rebuilds
# the initramfs. FORCE_KERNEL=1 re-downloads. KERNEL_PKG picks the meta
# package (default linux-image-cloud-amd64; linux-image-amd64 also boots).
set -euo pipefail

die() { echo "make_guest.sh: FAILED: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: make_guest.sh OUT_DIR"
OUT=$1
KERNEL_PKG=${KERNEL_PKG:-linux-image-cloud-amd64}
BUSYBOX=/bin/busybox
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' \
  || die "busybox-static not installed (run setup_packages.sh)"
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CACHE=$OUT/kernel-cache
mkdir -p "$CACHE"
t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'; }

# ---- kernel ----------------------------------------------------------------
tk=$(date +%s.%N)
stamp=$CACHE/kernel.pkg
if [[ -z ${FORCE_KERNEL:-} && -s $OUT/vmlinuz && -s $stamp && $(cat "$stamp") == "$KERNEL_PKG "* ]]; then
  kernel_note="cached ($(cut -d' ' -f2- "$stamp"))"
else
  # The meta package depends on exactly one versioned image package.
  img=$(apt-cache depends "$KERNEL_PKG" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  [[ -n $img ]] || die "cannot resolve $KERNEL_PKG to a linux-image-* package (apt-get update?)"
  rm -f "$CACHE"/*.deb
  (cd "$CACHE" && apt-get download -q -o APT::Sandbox::User=root "$img" >/dev/null) \
    || die "apt-get download $img"
  deb=$(ls "$CACHE"/"$img"_*.deb)
  # Extract only the kernel image (dpkg-deb -x would also unpack ~100 MB of modules).
  rm -rf "$CACHE/x" && mkdir -p "$CACHE/x"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$CACHE/x" --wildcards './boot/vmlinuz-*' ./boot/config-\* \
    || die "dpkg-deb extract of $deb"
  cp "$CACHE"/x/boot/vmlinuz-* "$OUT/vmlinuz"
  cp "$CACHE"/x/boot/config-* "$OUT/kernel.config"
  for opt in CONFIG_SERIAL_8250=y CONFIG_SERIAL_8250_CONSOLE=y CONFIG_BLK_DEV_INITRD=y \
             CONFIG_RD_GZIP=y CONFIG_DEVTMPFS=y; do
    grep -qx "$opt" "$OUT/kernel.config" || die "$img lacks built-in $opt"
  done
  rm -rf "$CACHE/x"
  echo "$KERNEL_PKG $img $(basename "$deb") $(stat -c %s "$deb")" > "$stamp"
  kernel_note="downloaded $(basename "$deb") ($(( $(stat -c %s "$deb") / 1024 )) KiB)"
  rm -f "$deb"   # keep only the extracted kernel
fi
tk=$(elapsed "$tk")

# ---- initramfs -------------------------------------------------------------
ti=$(date +%s.%N)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,run}
cp "$BUSYBOX" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
mknod -m 600 "$stage/dev/console" c 5 1
cat > "$stage/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
con=/dev/ttyS0
[ -c $con ] || con=/dev/console
echo "vgpu-guest: up kernel=$(uname -r) mem_kb=$(awk '/MemTotal/{print $2}' /proc/meminfo)" > $con
i=0
while :; do
  echo "vgpu-guest: tick $i uptime=$(cut -d' ' -f1 /proc/uptime)" > $con
  i=$((i+1))
  sleep 1
done
INIT
chmod 755 "$stage/init"
(cd "$stage" && find . | sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) \
  | gzip -9 > "$OUT/initramfs.cpio.gz.tmp" || die "cpio/gzip of initramfs"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
ti=$(elapsed "$ti")

echo "make_guest.sh: kernel: $kernel_note in ${tk}s"
echo "make_guest.sh: $OUT/vmlinuz $(stat -c %s "$OUT/vmlinuz") bytes ($(cut -d' ' -f2 "$stamp"))"
echo "make_guest.sh: $OUT/initramfs.cpio.gz $(stat -c %s "$OUT/initramfs.cpio.gz") bytes, built in ${ti}s"
echo "make_guest.sh: total $(elapsed "$t0")s"
