#!/usr/bin/env bash
# Builds the vCenter simulator the vSphere source's tests run against (scripts/vcsim/main.go:
# govmomi's simulator with a test CA), offline, from the distribution's packages:
#
#   scripts/vcsim.sh [OUT]     (default: $TERN_VCSIM, else ~/.cache/tern/vcsim/vcsim)
#
# Needs golang-go and golang-github-vmware-govmomi-dev (Debian/Ubuntu; installed with apt-get
# when run as root). Rebuilt only when main.go changed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${TERN_VCSIM:-$HOME/.cache/tern/vcsim/vcsim}}"
src="$here/vcsim/main.go"
sha="$(sha256sum "$src" | cut -d' ' -f1)"

if [[ -x "$out" && -f "$out.sha256" && "$(cat "$out.sha256")" == "$sha" ]]; then
  echo "vcsim up to date: $out"
  exit 0
fi

gocode=/usr/share/gocode/src/github.com/vmware/govmomi/simulator
if ! command -v go >/dev/null 2>&1 || [[ ! -d "$gocode" ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go golang-github-vmware-govmomi-dev >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go golang-github-vmware-govmomi-dev >/dev/null; }
  else
    echo "vcsim: needs Go and govmomi's sources; run: sudo apt-get install golang-go golang-github-vmware-govmomi-dev" >&2
    exit 1
  fi
fi

mkdir -p "$(dirname "$out")"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cp "$src" "$build/main.go"
# GOPATH mode over Debian's packaged Go sources: no module download.
(cd "$build" && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE="$build/cache" go build -o "$out" main.go)
echo "$sha" > "$out.sha256"
echo "vcsim built: $out"
