#!/usr/bin/env bash
# Installs every Debian package that xenkvm's build, tests and demo need. Idempotent: when all
# packages are present it only checks and returns (well under a second). Needs root (or sudo).
# Unicorn 2.1 is not in Debian 12: tools/fetch_unicorn.sh brings Debian 13's into third_party/unicorn/.
set -euo pipefail

packages=(
  # build
  bazel-bootstrap g++ gcc binutils clang lld libclang-rt-14-dev
  # libraries wrapped in third_party/
  libgtest-dev libgmock-dev libbenchmark-dev libabsl-dev libprotobuf-dev protobuf-compiler
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libspdlog-dev libfmt-dev liburing-dev
  libxen-dev zlib1g-dev liblzma-dev libzstd-dev liblz4-dev libbz2-dev libcli11-dev
  nlohmann-json3-dev prometheus-cpp-dev libseccomp-dev libboost-context-dev
  # tests and tools
  python3 python3-grpcio python3-protobuf xenstore-utils fio
  # real-guest tests (tests/linux): the initramfs and root image built at test time
  busybox-static cpio e2fsprogs
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exec "$(dirname "$0")/fetch_unicorn.sh"
fi

echo "setup: installing ${missing[*]}" >&2
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to apt-get install" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done" >&2
# Unicorn 2.1 (emu accelerator) comes from Debian 13, outside the machine's apt sources.
exec "$(dirname "$0")/fetch_unicorn.sh"
