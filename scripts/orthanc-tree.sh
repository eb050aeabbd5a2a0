#!/usr/bin/env bash
# Usage: scripts/orthanc-tree.sh [trixie|bookworm]
#
# Prepares the Orthanc release the host does not have for the tests:
# Debian trixie's (Orthanc 1.12) or bookworm's (1.10) orthanc and
# orthanc-dicomweb packages in a Debian tree of their own (debootstrap,
# ~2.5 min and ~360 MB the first time), which the test harness runs
# through the tree's dynamic loader on the host, without chroot
# (internal/testharness; docs/testing.md). A bookworm host (Orthanc 1.10)
# needs the trixie tree, a trixie host (1.12) the bookworm one; without
# an argument the script makes that one, after the host's Orthanc
# --version.
#
# The tree is cached: /var/cache/stowline/orthanc-SUITE as root, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/stowline/orthanc-SUITE, or
# $STOWLINE_ORTHANC_TRIXIE / $STOWLINE_ORTHANC_BOOKWORM if set. A present
# tree is used as it is. debootstrap fills a temporary directory next to
# it that is renamed into place only once complete, so an interrupted run
# never leaves half a tree.
#
# The Debian mirror is the one apt already uses (/etc/apt/sources.list and
# sources.list.d), else http://deb.debian.org/debian; STOWLINE_DEBIAN_MIRROR
# overrides it.
#
# Progress goes to stderr; the tree's path is printed on stdout.
set -euo pipefail

suite="${1:-}"
if [ -z "$suite" ]; then
  orthanc="$(command -v Orthanc || echo /usr/sbin/Orthanc)"
  host="$("$orthanc" --version 2>/dev/null | sed -nE '1s/.*[[:space:]]([0-9]+[.][0-9]+)[.][^[:space:]]*$/\1/p' || true)"
  case "$host" in
    1.10) suite=trixie ;;
    1.12) suite=bookworm ;;
    *)
      echo "orthanc-tree: the host's Orthanc ($orthanc) is '${host:-not installed}', neither 1.10 nor 1.12: name the tree to make, trixie or bookworm" >&2
      exit 1
      ;;
  esac
fi
# include: what debootstrap installs. It does not resolve virtual
# packages: bookworm's orthanc depends on libboost-regex1.74.0-icu72,
# which only libboost-regex1.74.0 provides, so that one is named.
case "$suite" in
  trixie)
    override="${STOWLINE_ORTHANC_TRIXIE:-}"
    include=orthanc,orthanc-dicomweb
    ;;
  bookworm)
    override="${STOWLINE_ORTHANC_BOOKWORM:-}"
    include=orthanc,orthanc-dicomweb,libboost-regex1.74.0
    ;;
  *)
    echo "usage: $0 [trixie|bookworm] (the Debian release whose Orthanc the host lacks)" >&2
    exit 2
    ;;
esac
name="orthanc-$suite"

if [ -n "$override" ]; then
  root="$override"
elif [ "$(id -u)" -eq 0 ]; then
  root="/var/cache/stowline/$name"
else
  root="${XDG_CACHE_HOME:-$HOME/.cache}/stowline/$name"
fi

complete() {
  [ -x "$1/usr/sbin/Orthanc" ] && [ -e "$1/usr/share/orthanc/plugins/libOrthancDicomWeb.so" ]
}

if complete "$root"; then
  echo "$root"
  exit 0
fi
if [ -e "$root" ]; then
  # Not made by this script (it renames only complete trees): leave it to
  # whoever made it.
  echo "$name: $root exists but holds no Orthanc and DICOMweb plugin; remove it or set STOWLINE_ORTHANC_${suite^^}" >&2
  exit 1
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# The first Debian archive apt uses: a "deb" line or a deb822 "URIs:" field
# whose path ends in /debian (not debian-security, not a third party's).
mirror="${STOWLINE_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -nE -e 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
      -e 's/^[[:space:]]*URIs:[[:space:]]*(.*)/\1/p' |
    tr ' \t' '\n\n' | sed -e 's,/*$,,' | grep -E '^(https?|file)://.*/debian$' | head -n1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

if ! command -v debootstrap >/dev/null 2>&1 || [ ! -e /usr/share/keyrings/debian-archive-keyring.gpg ]; then
  echo "$name: installing debootstrap and debian-archive-keyring" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update >&2
  $sudo apt-get install -y --no-install-recommends debootstrap debian-archive-keyring >&2
fi

parent="$(dirname "$root")"
mkdir -p "$parent"
# Leftovers of runs killed outright (no trap runs on SIGKILL); a run still
# going is not an hour old.
find "$parent" -mindepth 1 -maxdepth 1 -name ".$name.*" -mmin +60 -exec $sudo rm -rf {} + 2>/dev/null || true
tmp="$(mktemp -d "$parent/.$name.XXXXXX")"
cleanup() { $sudo rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
# mktemp makes it 0700; the tests run the tree as any user.
chmod 755 "$tmp"

echo "$name: debootstrap $suite with $include from $mirror into $root (takes a few minutes)" >&2
# In a session of its own, in the background: bash runs a trap only once
# its foreground command ends, and stopping this script must stop
# debootstrap and everything it started before the half tree is removed.
setsid $sudo debootstrap --variant=minbase --include="$include" "$suite" "$tmp" "$mirror" >&2 &
boot=$!
trap 'kill -TERM -- "-$boot" 2>/dev/null; wait "$boot"; exit 130' INT TERM HUP
wait "$boot"
trap 'exit 130' INT TERM HUP
# The downloaded packages are not needed to run it.
$sudo find "$tmp/var/cache/apt/archives" -name '*.deb' -delete
if ! complete "$tmp"; then
  echo "$name: debootstrap finished but $tmp lacks Orthanc or its DICOMweb plugin" >&2
  exit 1
fi
# Atomic: the tree appears complete or not at all. If a concurrent run got
# there first, its tree is as good as ours.
if ! mv -T "$tmp" "$root" 2>/dev/null && ! complete "$root"; then
  echo "$name: cannot move the tree into $root" >&2
  exit 1
fi
echo "$root"
