#!/usr/bin/env bash
# Fetches Debian's pvgrub2 for PVH guests (package grub-xen-host: /usr/lib/grub-xen/
# grub-i386-xen_pvh.bin, a PVH ELF that reads grub.cfg, a kernel and an initrd from the guest's own
# xen-disk) with apt-get download into a cache (never committed), unpacks it with dpkg-deb and
# prints the binary's path. Exit status 2: the package could not be fetched.
#
#   XENKVM_CACHE  cache directory (default /var/cache/xenkvm)
set -euo pipefail
source "$(dirname "$0")/debian_package.sh"

cache=${XENKVM_CACHE:-/var/cache/xenkvm}/pvgrub
mkdir -p "$cache"
cd "$cache"

version=$(package_field grub-xen-host Version)
tree=$cache/grub-xen-host-$version
binary=usr/lib/grub-xen/grub-i386-xen_pvh.bin
[ -s "$tree/$binary" ] || unpack_package grub-xen-host "$tree" "$binary"
echo "$tree/$binary"
