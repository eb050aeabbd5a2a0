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

. scripts/prereqs.sh
require_go

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
install_debs "the tests" "orthanc prometheus" ${need[@]+"${need[@]}"}

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
