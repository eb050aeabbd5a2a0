# Sourced by scripts/demo.sh and scripts/test.sh: what both check and
# install before they build anything.

# require_go exits unless a go command of 1.21 or later is on PATH: it
# fetches the release go.mod names itself (GOTOOLCHAIN=auto). Asked
# outside the repository, so that it reports the local go, not the one
# go.mod would fetch.
require_go() {
  local gover gomajor gominor
  gover="$(cd / && GOTOOLCHAIN=local go version 2>/dev/null | sed -nE 's/^go version (devel )?go([0-9]+)[.]([0-9]+).*/\2 \3/p')" || true
  read -r gomajor gominor <<<"${gover:-0 0}"
  if ! command -v go >/dev/null 2>&1 || [ "$gomajor" -lt 1 ] || { [ "$gomajor" -eq 1 ] && [ "$gominor" -lt 21 ]; }; then
    echo 'install Go 1.21 or later from https://go.dev/dl (it fetches the release go.mod names itself)' >&2
    exit 1
  fi
}

# install_debs WHO SERVICES PACKAGE... installs the Debian packages given
# (none: nothing to do), as root or with sudo, for WHO ("the demo", "the
# tests"). With systemd, a package starts its service (a system Orthanc
# whose DICOM port 4242 takes any C-STORE, a Prometheus on :9090): those
# of SERVICES (space-separated) this run installed are stopped and
# disabled, since WHO starts its own servers; ones installed before are
# left alone.
install_debs() {
  local who="$1" services="$2" sudo svc
  shift 2
  [ "$#" -gt 0 ] || return 0
  if [ "$(id -u)" -eq 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "Debian packages for $who are missing: $*; as root, run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends $*" >&2
    exit 1
  fi
  echo "installing $* (Debian packages for $who)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "$@"
  for svc in $services; do
    case " $* " in
      *" $svc "*)
        if $sudo systemctl disable --now "$svc" >/dev/null 2>&1; then
          echo "stopped and disabled the $svc service its package started ($who start their own servers)"
        fi
        ;;
    esac
  done
}
