#!/usr/bin/env bash
# One-command local demo of stowline (see internal/demo): two throwaway
# Orthanc servers, a "hospital" running lua/stowline.lua and an "archive"
# (DICOMweb) behind an OAuth2 token gate, and stowline in single-host mode
# between them. It sends sample studies, reports each one stable, queued,
# forwarded and verified on the archive, then keeps everything running
# until Ctrl-C (or SIGTERM), which stops it all and removes its data
# directory. The demo binary is built to ~/.cache/stowline/demo
# ($XDG_CACHE_HOME/stowline/demo) and kept there for the next run.
# Flags go to the demo (-h lists them; -exit stops after verification).
# On a fresh Debian machine it installs what is missing first; it runs the
# host's Orthanc, 1.10 (bookworm) or 1.12 (trixie).
set -euo pipefail
# The repository, without cd: the demo's flags (-dir, -samples, -lua) are
# relative to the user's working directory.
root="$(cd "$(dirname "$0")/.." && pwd)"

. "$root/scripts/prereqs.sh"
require_go
need=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
install_debs "the demo" orthanc ${need[@]+"${need[@]}"}

# go.mod's toolchain line names the Go release stowline is built with;
# "auto" lets an older local go fetch it (see scripts/test.sh).
export GOTOOLCHAIN=auto
# Build, then exec the binary itself, not "go run": go run does not pass
# SIGTERM on (a timeout, systemd, a CI job cancelled), so the demo would
# be orphaned with its Orthanc servers and data directory. The binary goes
# to one fixed path in the user's cache, overwritten at each run: exec
# replaces this shell, so nothing would remove a temporary one.
bin="${XDG_CACHE_HOME:-$HOME/.cache}/stowline/demo"
mkdir -p "$(dirname "$bin")"
echo 'building the demo (the first build takes a few minutes)…'
(cd "$root" && go build -o "$bin" ./cmd/demo)

# The demo finds the Lua script and the shared samples from its working
# directory upwards, which is the user's: point it at the repository's.
lua=(-lua "$root/lua/stowline.lua")
for arg in "$@"; do
  case "$arg" in
    -lua | -lua=* | --lua | --lua=*) lua=() ;;
  esac
done
d="$root"
while [ -z "${STOWLINE_DICOM_SAMPLES:-}" ]; do
  if [ -e "$d/shared/dicom-samples/MANIFEST.tsv" ]; then
    export STOWLINE_DICOM_SAMPLES="$d/shared/dicom-samples"
  elif [ "$d" = / ]; then
    break
  fi
  d="$(dirname "$d")"
done
exec "$bin" "${lua[@]}" "$@"
