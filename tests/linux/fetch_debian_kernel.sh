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
set -euo pipefail

cache=${XENKVM_CACHE:-/var/cache/xenkvm}/kernels
mkdir -p "$cache"
cd "$cache"

cannot_fetch() {
  echo "fetch_debian_kernel: $*" >&2
  exit 2
}

flavour=${XENKVM_KERNEL_FLAVOUR:-cloud-amd64}
meta=linux-image-$flavour
if ! depends=$(apt-cache show "$meta" 2>/dev/null | awk -F': ' '/^Depends:/ {print $2; exit}') || [ -z "$depends" ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  depends=$(apt-cache show "$meta" 2>/dev/null | awk -F': ' '/^Depends:/ {print $2; exit}') \
    || cannot_fetch "apt knows no $meta (apt-get update failed?)"
fi
package=$(grep -o "linux-image-[0-9][^ ,]*-$flavour" <<< "$depends" | head -n 1)
[ -n "$package" ] || cannot_fetch "$meta depends on no kernel package ($depends)"
version=${package#linux-image-}

tree=$cache/$version
if [ -s "$tree/boot/vmlinuz-$version" ]; then
  echo "$tree"
  exit 0
fi

deb=$(ls "$package"_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
  apt-get download "$package" >/dev/null 2>&1 || cannot_fetch "apt-get download $package failed"
  deb=$(ls "$package"_*.deb | head -n 1)
fi
work=$(mktemp -d "$cache/unpack.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work"
[ -s "$work/boot/vmlinuz-$version" ] || { echo "fetch_debian_kernel: $deb holds no boot/vmlinuz-$version" >&2; exit 1; }
rm -rf "$tree"
mv "$work" "$tree"
trap - EXIT
echo "$tree"
