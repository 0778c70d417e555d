#!/usr/bin/env bash
# What TLS costs on the client port: one Basalt (release) listening on an http:// and an
# https:// (--client-cert-auth) URL at once, the same basalt-bench workloads against each in
# turn, so both see the same data dir, disk and machine.
#
# Usage: perf/tls.sh [SECONDS_PER_RUN]   (default 10; the four runs take 4x that)
# Environment: CARGO_TARGET_DIR (default target): the release basalt and basalt-bench there
# are used as they are (build them first: cargo build --release -p basalt -p basalt-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
target=${CARGO_TARGET_DIR:-target}
basalt=$target/release/basalt
bench=$target/release/basalt-bench
work=$(mktemp -d /tmp/basalt-tls-perf.XXXXXX)
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; cat "$work/server.log" >&2; rm -rf "$work"' EXIT

# ECDSA P-256 certificates, as a cluster's PKI would typically issue.
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out ca.pem -days 2 -subj /CN=perf-ca 2>/dev/null
for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$who.key" \
        -out "$who.csr" -subj "/CN=$who" 2>/dev/null
done
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
printf 'extendedKeyUsage=clientAuth\n' >client.ext
for who in server client; do
    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$who.ext" -out "$who.pem" 2>/dev/null
done
cd - >/dev/null

# Ports the kernel picks free (other servers may run on this machine).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
plain=127.0.0.1:$(free_port)
secure=127.0.0.1:$(free_port)
"$basalt" --data-dir "$work/data" --listen-client-urls "http://$plain,https://$secure" \
    --advertise-client-urls "http://$plain" --cert-file "$work/server.pem" \
    --key-file "$work/server.key" --trusted-ca-file "$work/ca.pem" --client-cert-auth \
    >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    "$bench" --endpoints "$plain" --threads 1 put --total 1 >/dev/null 2>&1 && break
    sleep 0.1
done

tls=(--cacert "$work/ca.pem" --cert "$work/client.pem" --key "$work/client.key")
for workload in "1 1" "10 100"; do
    read -r conns clients <<<"$workload"
    for endpoint in "http://$plain" "https://$secure"; do
        echo "== put, $conns conns / $clients clients, $endpoint"
        "$bench" --endpoints "$endpoint" --conns "$conns" --clients "$clients" "${tls[@]}" \
            put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000 \
            --duration "$seconds"
    done
done
