# Sourced by the fetch_debian_*.sh scripts: Debian packages fetched with `apt-get download` into
# a cache (never committed) and unpacked there with dpkg-deb.

# Prints the message and exits 2, the scripts' "could not be fetched" status (tests skip on it).
cannot_fetch() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# A field of PACKAGE's record in apt's lists (apt-get update once if apt knows no such package).
package_field() {
  local package=$1 field=$2 value
  value=$(apt-cache show "$package" 2>/dev/null | awk -F': ' -v f="$field" '$1 == f {print $2; exit}')
  if [ -z "$value" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    value=$(apt-cache show "$package" 2>/dev/null | awk -F': ' -v f="$field" '$1 == f {print $2; exit}')
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
    apt-get download "$package" >/dev/null 2>&1 || cannot_fetch "apt-get download $package failed"
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
