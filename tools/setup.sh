#!/usr/bin/env bash
# Installs everything vgpu-migrate needs to build and test on Debian 12, with
# apt-get. Idempotent: when every package is present it says so and returns
# in about a second. Run as root.
set -euo pipefail

PACKAGES=(
  # build
  bazel-bootstrap bazel-platforms bazel-rules-java g++ python3
  # formats and storage
  capnproto libcapnp-dev libzstd-dev zstd libxxhash-dev librocksdb-dev
  # common libraries
  libabsl-dev libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libssl-dev
  libxml2-dev libvirt-dev
  # OpenCL: headers, the ICD loader, PoCL (a real OpenCL runtime on the CPU), clinfo
  opencl-headers ocl-icd-opencl-dev ocl-icd-libopencl1 pocl-opencl-icd clinfo
  # tests, fuzzing, benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-14-dev clang-format
  # hosts as network namespaces, link cuts (end-to-end tests, demo)
  iproute2 iptables procps
)

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  say "needs root to install packages (run it as root or with sudo)" >&2
  exit 2
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  say "all ${#PACKAGES[@]} packages are installed; nothing to do"
  exit 0
fi

say "installing ${#missing[@]} missing packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
say "apt-get update"
apt-get update -qq
say "apt-get install (this takes a few minutes on a fresh machine)"
apt-get install -y -qq "${missing[@]}" >/tmp/vgpu-setup-apt.log 2>&1 || {
  say "apt-get install failed; last lines of /tmp/vgpu-setup-apt.log:" >&2
  tail -20 /tmp/vgpu-setup-apt.log >&2
  exit 1
}
say "done: ${#missing[@]} packages installed"
