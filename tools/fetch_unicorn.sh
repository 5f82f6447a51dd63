#!/usr/bin/env bash
# Puts Unicorn 2.1 (Debian 13 "trixie": libunicorn-dev, whose libunicorn.a the emu accelerator links
# statically) into third_party/unicorn/dist/. Debian 12's Unicorn 2.0.1 translates every guest
# access as if virtual = physical once paging is on, so paged guests (any Linux) cannot run on it.
#
# The packages come through a private apt configuration (tools/debian_suite_apt.sh): the machine's
# apt sources are never touched. apt verifies them against trixie's signed Release file; this script
# checks each .deb's SHA256 against the hash apt gives before extracting it. Returns at once when
# the extracted copy is already there.
#
#   XENKVM_CACHE   cache directory (default /var/cache/xenkvm)
#   DEBIAN_MIRROR  Debian archive URI (default: the machine's own Debian mirror)
set -euo pipefail
cd "$(dirname "$0")/.."

dist=third_party/unicorn/dist
if [ -f "$dist/VERSION" ] && [ -f "$dist/lib/libunicorn.a" ] && [ -f "$dist/include/unicorn/unicorn.h" ]; then
  exit 0
fi

fail() {
  echo "fetch_unicorn: $*" >&2
  echo "fetch_unicorn: the emu accelerator needs Unicorn 2.1 (Debian 13's libunicorn-dev); there is no" \
       "fallback to Debian 12's 2.0.1, which cannot run paged guests. Check that Debian's archive is" \
       "reachable (or set DEBIAN_MIRROR to a Debian mirror that carries trixie), then run tools/setup.sh again." >&2
  exit 1
}

source tools/debian_suite_apt.sh
debian_suite_apt trixie "${XENKVM_CACHE:-/var/cache/xenkvm}" || fail "cannot create the private apt configuration"
apt_root=$DEBIAN_SUITE_APT_ROOT
apt_options=("${DEBIAN_SUITE_APT[@]}")
mirror=$(awk '{print $3}' "$apt_root/sources.list")
packages=(libunicorn-dev libunicorn2t64)

echo "fetch_unicorn: fetching Unicorn 2.1 from Debian trixie ($mirror)" >&2
apt-get "${apt_options[@]}" -qq update >/dev/null || fail "apt-get update of the private trixie configuration failed"
uris=$(apt-get "${apt_options[@]}" download --print-uris "${packages[@]}" 2>/dev/null) \
  || fail "trixie has no ${packages[*]} (apt-get download --print-uris failed)"
(cd "$apt_root/debs" && apt-get "${apt_options[@]}" -qq download "${packages[@]}" >/dev/null) \
  || fail "apt-get download ${packages[*]} failed"

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
while read -r _ file _ hash; do
  [ -n "$file" ] || continue
  deb=$apt_root/debs/$file
  [ -f "$deb" ] || fail "apt-get download left no $deb"
  expected=${hash#SHA256:}
  actual=$(sha256sum "$deb" | cut -d' ' -f1)
  [ "$expected" = "$actual" ] || fail "$file: SHA256 $actual, but apt's index says $expected"
  dpkg-deb -x "$deb" "$staging/root" || fail "dpkg-deb -x $deb failed"
done <<< "$uris"

version=$(dpkg-deb -f "$apt_root/debs/$(awk '/libunicorn-dev_/ {print $2}' <<< "$uris")" Version)
case "$version" in
  2.1.*) ;;
  *) fail "trixie's libunicorn-dev is $version, not 2.1.x: the emu backend is written for 2.1" ;;
esac

mkdir -p "$staging/dist/lib" "$staging/dist/include"
cp "$staging/root/usr/lib/x86_64-linux-gnu/libunicorn.a" "$staging/dist/lib/" || fail "the package has no libunicorn.a"
cp -r "$staging/root/usr/include/unicorn" "$staging/dist/include/"
cp "$staging/root/usr/share/doc/libunicorn-dev/copyright" "$staging/dist/COPYRIGHT"
echo "$version" > "$staging/dist/VERSION"
rm -rf "$dist"
mkdir -p "$(dirname "$dist")"
mv "$staging/dist" "$dist"
echo "fetch_unicorn: Unicorn $version in $dist" >&2
