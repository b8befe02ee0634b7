#!/usr/bin/env bash
# The whole test suite: unit, property, HTTP, end-to-end against real etcd, crash tests.
# Installs what the tests need when missing: etcd 3.4 for the differential tests, etcdctl,
# the python-etcd library (in a virtualenv under target/) and Go with etcd's Go client (built
# under target/) for the client tests, Chromium for the dashboard tests (headless),
# cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
[ -d /usr/share/gocode/src/go.etcd.io/etcd/client ] || need_apt+=(golang-etcd-server-dev)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if ! command -v python3 >/dev/null 2>&1; then need_apt+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]} (apt-get)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's etcd-server starts a system etcd on 2379; our tests use their own ports, but a fresh
# user running `rota serve` expects 2379 free.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl stop etcd || true; fi

# python-etcd, the etcd v2 client library most Python code uses (tests/it/etcd_clients.rs).
PYCLIENTS="$PWD/target/pyclients"
if ! "$PYCLIENTS/bin/python" -c 'import etcd' >/dev/null 2>&1; then
  echo "==> installing python-etcd into $PYCLIENTS (pip)"
  rm -rf "$PYCLIENTS"
  python3 -m venv "$PYCLIENTS"
  "$PYCLIENTS/bin/pip" install -q 'python-etcd==0.4.5'
fi
export ROTA_IT_PYTHON="$PYCLIENTS/bin/python"

# The official Go client of etcd's v2 API (go.etcd.io/etcd/client, from Debian's
# golang-etcd-server-dev), built in GOPATH mode without network (tests/it/etcd_clients.rs).
GOCLIENTS="$PWD/target/goclients"
mkdir -p "$GOCLIENTS/gopath/src/gosession"
cp crates/rota/tests/it/go_etcd_session.go "$GOCLIENTS/gopath/src/gosession/main.go"
echo "==> building the Go etcd client session"
(cd "$GOCLIENTS/gopath/src/gosession" &&
  GO111MODULE=off GOFLAGS= GOPATH="$GOCLIENTS/gopath:/usr/share/gocode" GOCACHE="$GOCLIENTS/cache" \
  go build -o "$GOCLIENTS/go_etcd_session" .)
export ROTA_IT_GO_SESSION="$GOCLIENTS/go_etcd_session"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> building"
cargo build --workspace --tests --bins
echo "==> testing"
cargo nextest run --workspace --no-fail-fast "$@"
