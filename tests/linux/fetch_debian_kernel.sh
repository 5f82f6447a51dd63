#!/usr/bin/env bash
# Fetches Debian's current cloud kernel (linux-image-cloud-amd64's kernel package; another flavour,
# e.g. amd64 for the generic kernel, with XENKVM_KERNEL_FLAVOUR) with apt-get
# download into a cache (never committed), unpacks it with dpkg-deb and prints the unpacked tree's
# path: boot/vmlinuz-VERSION (the bzImage as shipped, which xenkvm boots as it is) and
# lib/modules/VERSION (xen-blkfront.ko and the others). Exit status 2: the package could not be
# fetched (no archive reachable).
#
#   XENKVM_CACHE           cache directory (default /var/cache/xenkvm)
#   XENKVM_KERNEL_FLAVOUR  Debian's kernel flavour (default cloud-amd64)
#   XENKVM_DEBIAN_SUITE    another Debian suite's kernel, e.g. trixie (debian_package.sh)
set -euo pipefail
source "$(dirname "$0")/debian_package.sh"

cache=${XENKVM_CACHE:-/var/cache/xenkvm}/kernels
mkdir -p "$cache"
cd "$cache"

flavour=${XENKVM_KERNEL_FLAVOUR:-cloud-amd64}
meta=linux-image-$flavour
depends=$(package_field "$meta" Depends)
package=$(grep -o "linux-image-[0-9][^ ,]*-$flavour" <<< "$depends" | head -n 1)
[ -n "$package" ] || cannot_fetch "$meta depends on no kernel package ($depends)"
version=${package#linux-image-}

tree=$cache/$version
[ -s "$tree/boot/vmlinuz-$version" ] || unpack_package "$package" "$tree" "boot/vmlinuz-$version"
echo "$tree"
