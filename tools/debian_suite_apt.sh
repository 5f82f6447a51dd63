# Sourced (tools/fetch_unicorn.sh, tests/linux/debian_package.sh): a private apt configuration for a
# Debian suite other than the machine's (trixie's Unicorn 2.1, a newer kernel). It keeps its own
# sources list, lists and state under the cache directory; the machine's apt sources are never
# touched. apt verifies what it fetches against the suite's signed Release file.
#
#   DEBIAN_MIRROR  Debian archive URI (default: the machine's own Debian mirror, else Debian's CDN)

# debian_suite_apt SUITE CACHE: writes the configuration under CACHE/apt-SUITE and sets
# DEBIAN_SUITE_APT (the options to give apt-get and apt-cache) and DEBIAN_SUITE_APT_ROOT. Returns
# non-zero when the directory cannot be made.
debian_suite_apt() {
  local suite=$1 root=$2/apt-$1 mirror=${DEBIAN_MIRROR:-}
  mkdir -p "$root/lists/partial" "$root/cache/archives/partial" "$root/debs" || return 1
  touch "$root/status" || return 1
  if [ -z "$mirror" ]; then
    # The machine's own Debian mirror (deb822 or one-line format).
    mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
               /etc/apt/sources.list 2>/dev/null \
             | grep -oE 'https?://[^ ]*/debian/?$|https?://[^ ]*/debian ' | head -n 1 | tr -d ' ') || true
    mirror=${mirror:-http://deb.debian.org/debian}
  fi
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror%/} $suite main" \
    > "$root/sources.list" || return 1
  DEBIAN_SUITE_APT_ROOT=$root
  DEBIAN_SUITE_APT=(
    -o "Dir::Etc::SourceList=$root/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State=$root" -o "Dir::State::Lists=$root/lists" -o "Dir::State::status=$root/status"
    -o "Dir::Cache=$root/cache" -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "APT::Sandbox::User=root" -o "Acquire::Languages=none"
  )
}
