#!/usr/bin/env bash
# Fetches Debian's current cloud kernel (linux-image-cloud-amd64's kernel package) with apt-get
# download into a cache (never committed) and prints the path of its vmlinux: the ELF inside the
# shipped bzImage, decompressed with the system's tools (lz4, xz, zstd, gzip) until xenkvm's loader
# takes bzImages itself. Exit status 2: the package could not be fetched (no archive reachable).
#
#   XENKVM_CACHE   cache directory (default /var/cache/xenkvm)
set -euo pipefail

cache=${XENKVM_CACHE:-/var/cache/xenkvm}/kernels
mkdir -p "$cache"
cd "$cache"

cannot_fetch() {
  echo "fetch_debian_kernel: $*" >&2
  exit 2
}

meta=linux-image-cloud-amd64
if ! depends=$(apt-cache show "$meta" 2>/dev/null | awk -F': ' '/^Depends:/ {print $2; exit}') || [ -z "$depends" ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  depends=$(apt-cache show "$meta" 2>/dev/null | awk -F': ' '/^Depends:/ {print $2; exit}') \
    || cannot_fetch "apt knows no $meta (apt-get update failed?)"
fi
package=$(grep -o 'linux-image-[0-9][^ ,]*-cloud-amd64' <<< "$depends" | head -n 1)
[ -n "$package" ] || cannot_fetch "$meta depends on no kernel package ($depends)"
version=${package#linux-image-}

vmlinux=$cache/vmlinux-$version
if [ -s "$vmlinux" ]; then
  echo "$vmlinux"
  exit 0
fi

deb=$(ls "$package"_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
  apt-get download "$package" >/dev/null 2>&1 || cannot_fetch "apt-get download $package failed"
  deb=$(ls "$package"_*.deb | head -n 1)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/root"
vmlinuz=$(ls "$work"/root/boot/vmlinuz-* | head -n 1)

# The bzImage setup header: setup_sects at 0x1f1, payload_offset and payload_length at 0x248.
u32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
setup_sects=$(od -An -t u1 -j $((0x1f1)) -N 1 "$vmlinuz" | tr -d ' ')
if [ "$setup_sects" -eq 0 ]; then setup_sects=4; fi
start=$(( (setup_sects + 1) * 512 + $(u32 "$vmlinuz" $((0x248))) ))
length=$(u32 "$vmlinuz" $((0x24c)))
dd if="$vmlinuz" of="$work/payload" bs=1M iflag=skip_bytes,count_bytes skip="$start" count="$length" status=none
magic=$(od -An -t x1 -N 4 "$work/payload" | tr -d ' ')
case "$magic" in
  02214c18) lz4 -dc "$work/payload" > "$work/vmlinux" 2>/dev/null || true ;;  # trailing size word: lz4 complains
  fd377a58) xz -dc "$work/payload" > "$work/vmlinux" 2>/dev/null || true ;;
  28b52ffd) zstd -dc "$work/payload" > "$work/vmlinux" 2>/dev/null || true ;;
  1f8b*) gzip -dc "$work/payload" > "$work/vmlinux" 2>/dev/null || true ;;
  *) echo "fetch_debian_kernel: $vmlinuz: unknown payload compression (magic $magic)" >&2; exit 1 ;;
esac
[ "$(od -An -t x1 -N 4 "$work/vmlinux" | tr -d ' ')" = 7f454c46 ] \
  || { echo "fetch_debian_kernel: $vmlinuz: the payload is no ELF" >&2; exit 1; }
mv "$work/vmlinux" "$vmlinux"
echo "$vmlinux"
