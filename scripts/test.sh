#!/usr/bin/env bash
# Runs stowline's whole test suite: unit tests, and integration tests
# against real Orthanc servers (Debian packages orthanc, orthanc-dicomweb:
# the host's, 1.10 on bookworm or 1.12 on trixie, and the other release in
# a tree of its own),
# dcmtk's storescu, an embedded nats-server, a real OAuth2 server and, for
# the status page, headless Chromium (Debian package chromium).
# On a fresh Debian machine (bookworm or trixie) it installs what is
# missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

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
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# deploy/systemd_test.go checks the unit with systemd-analyze verify.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# deploy/alerts_test.go runs the alert rules' unit tests with promtool
# (Debian package prometheus; on a host with systemd it also starts a
# Prometheus server on :9090, stopped below).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# go test -race needs cgo: a C compiler and the C library's headers.
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/include/stdlib.h ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "the tests need Debian packages ${need[*]}; as root, run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]} (Debian packages the integration tests need)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${need[@]}"
  # With systemd, the packages start services the tests do not use: a
  # system Orthanc whose DICOM port 4242 takes any C-STORE, a Prometheus
  # on :9090. Those this run installed are stopped; earlier ones are left
  # alone.
  for svc in orthanc prometheus; do
    case " ${need[*]} " in
      *" $svc "*)
        if $sudo systemctl disable --now "$svc" >/dev/null 2>&1; then
          echo "stopped and disabled the $svc service its package started (the tests run their own servers)"
        fi
        ;;
    esac
  done
fi

# Orthanc-facing tests run on each release in STOWLINE_ORTHANC_RELEASES,
# by default both: the host's Orthanc installed above (1.10 on Debian
# bookworm, 1.12 on trixie) and the other release unpacked in a Debian
# tree of its own (made the first time, a few minutes; docs/testing.md).
orthanc="$(command -v Orthanc || echo /usr/sbin/Orthanc)"
host="$("$orthanc" --version | sed -nE '1s/.*[[:space:]]([0-9]+[.][0-9]+)[.][^[:space:]]*$/\1/p')"
releases="${STOWLINE_ORTHANC_RELEASES:-1.10,1.12}"
for rel in 1.10 1.12; do
  case ",${releases// /}," in
    *,"$rel",*) ;;
    *) continue ;;
  esac
  [ "$rel" != "$host" ] || continue
  if [ "$rel" = 1.12 ]; then
    STOWLINE_ORTHANC_TRIXIE="$(./scripts/orthanc-tree.sh trixie)"
    export STOWLINE_ORTHANC_TRIXIE
  else
    STOWLINE_ORTHANC_BOOKWORM="$(./scripts/orthanc-tree.sh bookworm)"
    export STOWLINE_ORTHANC_BOOKWORM
  fi
done

# go.mod's toolchain line names the patched Go release stowline is built
# and tested with; "auto" lets an older local go fetch it from the module
# proxy (some installs default to "local", which would ignore it).
export GOTOOLCHAIN=auto
go version

go vet ./...
# staticcheck, pinned, from the Go module proxy; go run, not go install,
# which puts it where GOBIN or GOPATH (possibly a list) say.
staticcheck=honnef.co/go/tools/cmd/staticcheck@v0.8.2
go run "$staticcheck" ./...
# -race: the forwarder is concurrent; -count=1: integration tests always run.
go test -race -count=1 -timeout 40m "$@" ./...
# The Helm chart's checks (deploy/helm/chartcheck): a module of its own, so
# that the main module stays free of Helm and Kubernetes dependencies.
go -C deploy/helm/chartcheck vet ./...
(cd deploy/helm/chartcheck && go run "$staticcheck" ./...)
go -C deploy/helm/chartcheck test -count=1 ./...
# No called symbol with a known vulnerability, in modules or in the
# standard library. Last: a vulnerability published today fails the run
# too, but only after every test result is in.
./scripts/vulncheck.sh
