#!/usr/bin/env bash
# One-command local demo of stowline (see internal/demo): two throwaway
# Orthanc servers, a "hospital" running lua/stowline.lua and an "archive"
# (DICOMweb) behind an OAuth2 token gate, and stowline in single-host mode
# between them. It sends sample studies, reports each one stable, queued,
# forwarded and verified on the archive, then keeps everything running
# until Ctrl-C, which stops it all and removes its data directory.
# Flags go to the demo (-h lists them; -exit stops after verification).
# On a fresh Debian/Ubuntu machine it installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages the demo needs)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi
# The Debian package starts a system Orthanc on 8042/4242; the demo starts
# its own on free ports and leaves that one alone.

# go.mod's toolchain line names the Go release stowline is built with;
# "auto" lets an older local go fetch it (see scripts/test.sh).
export GOTOOLCHAIN=auto
exec go run ./cmd/demo "$@"
