#!/usr/bin/env bash
# 3-member clusters side by side: Basalt and etcd 3.5.1, each in network namespaces (one per
# member, tests/cluster/cluster.py), with 0 ms and with 1 ms added round trip between members
# (0.5 ms each way, held back by tests/cluster/nfq_delay: this kernel has no netem). In one run:
#   - the disk's fdatasync floor (basalt-bench disk) on the disk the data dirs are on;
#   - per server and per delay, one cluster at a time (never two competing for the CPU):
#     put latency with 1 client, put throughput with 100 and 1000 clients, all sent to the leader
#     by basalt-bench running in the clusters' own namespace; for the bound of a lone put, the
#     round trip between members (ping) and a no-op round trip to the leader (serializable range);
#   - the cluster block of perf/RESULTS.md (perf/report.py cluster).
#
# Usage: perf/cluster.sh [--quick] [--no-build] [--servers "etcd basalt"]
#   --quick      3 s per workload instead of 15, a smaller disk harness
#   --no-build   use the release binaries already in the target dir
# Needs root (namespaces, nftables, iptables NFQUEUE), gcc and libnetfilter-queue-dev.
# Environment: CARGO_TARGET_DIR (default target), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
build=1
servers="etcd basalt"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        --servers) servers=$2; shift ;;
        *) echo "usage: perf/cluster.sh [--quick] [--no-build] [--servers \"etcd basalt\"]" >&2; exit 2 ;;
    esac
    shift
done

venv=${VENV:-.venv}
target=${CARGO_TARGET_DIR:-target}
# Under perf/out/ (ignored by git), on the disk the comparison of compare.sh uses.
out=$PWD/perf/out/cluster
rm -rf "$out"
mkdir -p "$out"
started=$(date +%s)
cat /proc/loadavg >"$out/loadavg.txt"
log() { echo "== [$(( $(date +%s) - started ))s] $*"; }

if [[ $quick == 1 ]]; then
    seconds=3
    disk_flags=(--file-mib 64 --samples 300 --seconds-per-size 2 --fio-mib 2 --wal-seconds-per-point 0.5)
else
    seconds=15
    disk_flags=(--file-mib 256 --samples 2000 --seconds-per-size 8 --fio-mib 22 --wal-seconds-per-point 2)
fi
# One-way delays between members, in ms: 0 and 0.5 (a 1 ms round trip).
delays=(0 0.5)
# name|global flags: keys and values as in perf/compare.sh (8-byte keys, 256-byte values).
workloads=(
    "put-1x1|--conns 1 --clients 1"
    "put-10x100|--conns 10 --clients 100"
    "put-100x1000|--conns 100 --clients 1000"
)

if [[ $build == 1 ]]; then
    log "building basalt and basalt-bench (release)"
    cargo build --release --quiet -p basalt -p basalt-bench
fi
bench=$(realpath "$target/release/basalt-bench")
export BASALT_BIN
BASALT_BIN=$(realpath "$target/release/basalt" 2>/dev/null || echo "$target/release/basalt")
export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python

log "disk floor on $out (the disk the data dirs are on)"
"$bench" disk "$out" "${disk_flags[@]}" --json "$out/disk.json" >"$out/disk.txt" 2>&1 ||
    echo "the disk harness failed; the floor is left out"
grep -iE "fdatasync|4 KiB" "$out/disk.txt" | head -5 || true

cluster_pid=
cleanup() {
    if [[ -n $cluster_pid ]]; then kill "$cluster_pid" 2>/dev/null || true; wait "$cluster_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

for server in $servers; do
    for delay in "${delays[@]}"; do
        label="$server-delay$delay"
        log "$server, 3 members in namespaces, ${delay} ms each way between members"
        "$venv/bin/python" tests/cluster/cluster.py up --kind "$server" --size 3 --netns \
            --delay-ms "$delay" --base-dir "$out" >"$out/$label.cluster.json" 2>"$out/$label.cluster.log" &
        cluster_pid=$!
        for _ in $(seq 1 120); do
            [[ -s $out/$label.cluster.json ]] && break
            kill -0 "$cluster_pid" 2>/dev/null || break
            sleep 0.5
        done
        if [[ ! -s $out/$label.cluster.json ]]; then
            echo "  $server did not form a cluster; see $out/$label.cluster.log" | tee "$out/$label.missing.txt"
            tail -5 "$out/$label.cluster.log" || true
            cleanup
            cluster_pid=
            continue
        fi
        ns=$("$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["router_ns"])' "$out/$label.cluster.json")
        leader=$("$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["leader"])' "$out/$label.cluster.json")
        # The parts of a lone put's bound: one round trip between members (UDP from the leader's
        # namespace to a follower's, through the same delay) and one no-op client round trip (a
        # serializable range of a missing key, answered by the leader alone).
        read -r leader_ns follower_ns follower_ip < <("$venv/bin/python" -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["leader_ns"], *c["followers"][0])' "$out/$label.cluster.json")
        ip netns exec "$follower_ns" python3 perf/udp_rtt.py echo "$follower_ip" 7999 &
        echo_pid=$!
        sleep 0.3
        ip netns exec "$leader_ns" python3 perf/udp_rtt.py ping "$follower_ip" 7999 200 >"$out/$label-ping.txt" 2>&1 ||
            echo "  (round trips from the leader failed: see $out/$label-ping.txt)"
        kill "$echo_pid" 2>/dev/null || true
        wait "$echo_pid" 2>/dev/null || true
        ip netns exec "$ns" "$bench" --endpoints "$leader" --conns 1 --clients 1 --json "$out/$label-range-s-1x1.json" \
            range basalt-bench-missing-key --consistency s --duration "$seconds" >"$out/$label-range-s-1x1.txt" 2>&1 ||
            echo "  ($label range-s-1x1 failed: see $out/$label-range-s-1x1.txt)"
        echo "  range-s-1x1: $(grep -E '^range ' "$out/$label-range-s-1x1.txt" || echo '-')"
        for entry in "${workloads[@]}"; do
            IFS='|' read -r wname globals <<<"$entry"
            # shellcheck disable=SC2086  # the flag string is meant to split into words
            ip netns exec "$ns" "$bench" --endpoints "$leader" $globals --json "$out/$label-$wname.json" \
                put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000 --duration "$seconds" \
                >"$out/$label-$wname.txt" 2>&1 || echo "  ($label $wname failed: see $out/$label-$wname.txt)"
            echo "  $wname: $(grep -E '^put ' "$out/$label-$wname.txt" || echo '-')"
        done
        cleanup
        cluster_pid=
    done
done

log "writing perf/RESULTS.md (cluster block)"
version="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!perf' || echo -dirty)"
"$venv/bin/python" perf/report.py cluster "$out" --quick "$quick" --basalt-version "$version" --seconds "$seconds"
log "done in $(( $(date +%s) - started )) s"
