#!/usr/bin/env bash
# Runs govulncheck on stowline: fails when the code calls a symbol with a
# known vulnerability (in a module or in the Go standard library of the
# toolchain go.mod asks for).
#
# govulncheck reads the Go vulnerability database, normally from
# https://vuln.go.dev. That database is generated from the OSV files in the
# golang.org/x/vulndb module, which the Go module proxy serves; machines
# that reach only the proxy (this project's CI) build the database locally
# from that module's latest version. STOWLINE_VULNDB overrides the source
# (a URL or file:// path of a v1 database).
set -euo pipefail
cd "$(dirname "$0")/.."

govulncheck=golang.org/x/vuln/cmd/govulncheck@v1.9.0
db="${STOWLINE_VULNDB:-}"
if [ -z "$db" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # A throwaway module, so resolving @latest never touches this go.mod.
  (cd "$work" && go mod init vulndb-fetch >/dev/null 2>&1)
  info="$(cd "$work" && go mod download -json golang.org/x/vulndb@latest)"
  dir="$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  version="$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Version": "\(.*\)",$/\1/p')"
  if [ -z "$dir" ] || [ ! -d "$dir/data/osv" ]; then
    echo "vulncheck: could not fetch golang.org/x/vulndb through the module proxy:" >&2
    printf '%s\n' "$info" >&2
    exit 1
  fi
  echo "vulncheck: database built from golang.org/x/vulndb@$version ($(ls "$dir/data/osv" | wc -l) OSV entries)"
  (cd "$work" && go run "golang.org/x/vulndb/cmd/indexdb@$version" -vulns "$dir/data/osv" -out "$work/db")
  db="file://$work/db"
fi
echo "vulncheck: $(go version)"
go run "$govulncheck" -db "$db" ./...
