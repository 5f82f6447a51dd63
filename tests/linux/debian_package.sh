# Sourced by the fetch_debian_*.sh scripts: Debian packages fetched with `apt-get download` into
# a cache (never committed) and unpacked there with dpkg-deb.
#
#   XENKVM_DEBIAN_SUITE  a Debian suite other than the machine's (e.g. trixie), reached through a
#                        private apt configuration (tools/debian_suite_apt.sh); default: the
#                        machine's own apt sources

# Prints the message and exits 2, the scripts' "could not be fetched" status (tests skip on it).
cannot_fetch() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

APT_OPTIONS=()
if [ -n "${XENKVM_DEBIAN_SUITE:-}" ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/../../tools/debian_suite_apt.sh"
  debian_suite_apt "$XENKVM_DEBIAN_SUITE" "${XENKVM_CACHE:-/var/cache/xenkvm}" \
    || cannot_fetch "cannot set up apt for Debian $XENKVM_DEBIAN_SUITE"
  APT_OPTIONS=("${DEBIAN_SUITE_APT[@]}")
fi

# A field of PACKAGE's record in apt's lists (apt-get update once if apt knows no such package).
package_field() {
  local package=$1 field=$2 value
  value=$(apt-cache "${APT_OPTIONS[@]}" show "$package" 2>/dev/null | awk -F': ' -v f="$field" '$1 == f {print $2; exit}')
  if [ -z "$value" ]; then
    apt-get "${APT_OPTIONS[@]}" update -qq >/dev/null 2>&1 || true
    value=$(apt-cache "${APT_OPTIONS[@]}" show "$package" 2>/dev/null | awk -F': ' -v f="$field" '$1 == f {print $2; exit}')
  fi
  [ -n "$value" ] || cannot_fetch "apt knows no $package (apt-get update failed?)"
  echo "$value"
}

# Downloads PACKAGE's .deb into the current directory (once) and unpacks it as TREE; TREE stays
# absent when unpacking fails. CHECK, a path inside the package, must be there.
unpack_package() {
  local package=$1 tree=$2 check=$3
  local deb
  deb=$(ls "$package"_*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$deb" ]; then
    apt-get "${APT_OPTIONS[@]}" download "$package" >/dev/null 2>&1 || cannot_fetch "apt-get download $package failed"
    deb=$(ls "$package"_*.deb | head -n 1)
  fi
  local work
  work=$(mktemp -d "$(dirname "$tree")/unpack.XXXXXX")
  dpkg-deb -x "$deb" "$work"
  if [ ! -s "$work/$check" ]; then
    rm -rf "$work"
    echo "$(basename "$0"): $deb holds no $check" >&2
    exit 1
  fi
  rm -rf "$tree"
  mv "$work" "$tree"
}
