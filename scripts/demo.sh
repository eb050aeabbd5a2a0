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

# Go first, before anything is installed: 1.21 or later fetches the
# release go.mod names (GOTOOLCHAIN=auto). Asked outside the repository,
# so that it reports the local go, not the one go.mod would fetch.
gover="$(cd / && GOTOOLCHAIN=local go version 2>/dev/null | sed -nE 's/^go version (devel )?go([0-9]+)[.]([0-9]+).*/\2 \3/p')" || true
read -r gomajor gominor <<<"${gover:-0 0}"
if ! command -v go >/dev/null 2>&1 || [ "$gomajor" -lt 1 ] || { [ "$gomajor" -eq 1 ] && [ "$gominor" -lt 21 ]; }; then
  echo 'install Go 1.21 or later from https://go.dev/dl (it fetches the release go.mod names itself)' >&2
  exit 1
fi

need=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "the demo needs Debian packages ${need[*]}; as root, run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]} (Debian packages the demo needs)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${need[@]}"
  # The package starts a system Orthanc (with systemd) whose DICOM port
  # 4242 takes any C-STORE; the demo runs its own, so the one this run
  # installed is stopped. One installed before is left alone.
  case " ${need[*]} " in
    *" orthanc "*)
      if $sudo systemctl disable --now orthanc >/dev/null 2>&1; then
        echo "stopped and disabled the system Orthanc the orthanc package started (DICOM port 4242 took any C-STORE); the demo runs its own"
      fi
      ;;
  esac
fi

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
