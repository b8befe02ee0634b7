#!/usr/bin/env bash
# The whole test suite: unit, property, HTTP, end-to-end against real etcd, crash tests.
# Installs what the tests need (etcd 3.4 for the differential tests, cargo-nextest) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]} (apt-get)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's etcd-server starts a system etcd on 2379; our tests use their own ports, but a fresh
# user running `rota serve` expects 2379 free.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl stop etcd || true; fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> building"
cargo build --workspace --tests --bins
echo "==> testing"
cargo nextest run --workspace --no-fail-fast "$@"
