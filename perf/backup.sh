#!/usr/bin/env bash
# Continuous backup under load (issue 20's numbers): a Basalt member gets KEYS distinct keys,
# then `basalt backup` starts (its first snapshot holds them) and basalt-bench puts at RATE/s for
# SECONDS while /metrics is sampled every 100 ms (basalt_backup_lag_seconds); rounds without and
# with the backup at no rate limit give the throughput cost; finally `basalt restore` to the
# head revision is timed (the snapshot plus every event after it).
# The server runs on SERVER_CPUS (default 0), basalt-bench and the backup on CLIENT_CPUS (default
# 1), pinned with taskset, so the cost is the backup's load on the server, not CPU they share.
# Usage: perf/backup.sh BASALT_BIN BENCH_BIN WORKDIR [KEYS] [RATE] [SECONDS]
set -euo pipefail
BASALT=$1 BENCH=$2 WORK=$3 KEYS=${4:-1000000} RATE=${5:-10000} SECONDS_=${6:-100}
ON_SERVER=(taskset -c "${SERVER_CPUS:-0}") ON_CLIENT=(taskset -c "${CLIENT_CPUS:-1}")
PORT=$((30000 + RANDOM % 9000)); PEER=$((PORT + 1)); METRICS=$((PORT + 2))
rm -rf "$WORK"; mkdir -p "$WORK"
EP=127.0.0.1:$PORT
"${ON_SERVER[@]}" "$BASALT" --name p --data-dir "$WORK/data" --listen-client-urls http://$EP --advertise-client-urls http://$EP \
  --listen-peer-urls http://127.0.0.1:$PEER --initial-advertise-peer-urls http://127.0.0.1:$PEER \
  --initial-cluster p=http://127.0.0.1:$PEER >"$WORK/server.log" 2>&1 &
SERVER=$!
BACKUP=
cleanup() { kill $SERVER ${BACKUP:-} 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
sleep 2
echo "== $KEYS keys"
"${ON_CLIENT[@]}" "$BENCH" --endpoints $EP --conns 4 --clients 100 put --sequential-keys --key-space-size "$KEYS" --total "$KEYS" | grep -E "^(series|put )"
# The throughput cost: ROUNDS rounds of PUT_SECONDS each without and with the backup following,
# alternated, medians compared. Between rounds the backup is stopped and resumed (it catches up
# before the next round starts). The backup shares the load generator's core: at normal priority
# its wake-ups (one per watch response) preempt basalt-bench there, a cost to the client's core
# that a real deployment does not pay; BACKUP_SCHED (default `chrt --idle 0`, SCHED_IDLE: it runs
# whenever that core has a moment) keeps it out, and BACKUP_SCHED= measures it shared.
read -r -a BACKUP_SCHED <<<"${BACKUP_SCHED-chrt --idle 0}"
ROUNDS=${ROUNDS:-3} PUT_SECONDS=${PUT_SECONDS:-10}
server_revision() {
  curl -s -X POST http://$EP/v3/kv/range -d '{"key":"AA=="}' | sed -E 's/.*"revision":"?([0-9]+).*/\1/'
}
metric() { curl -s http://127.0.0.1:$METRICS/metrics | awk -v m="$1" '$1 == m {print $2}'; }
start_backup() {
  "${BACKUP_SCHED[@]}" "${ON_CLIENT[@]}" "$BASALT" backup --endpoints $EP --dir "$WORK/backup" --flush-interval 200ms \
    --snapshot-interval 0 --listen-metrics-url 127.0.0.1:$METRICS 2>>"$WORK/backup.log" &
  BACKUP=$!
  local head; head=$(server_revision)
  until [ "$(metric basalt_backup_durable_revision 2>/dev/null || echo 0)" -ge "$head" ] 2>/dev/null; do sleep 0.2; done
}
stop_backup() { kill $BACKUP; wait $BACKUP 2>/dev/null || true; BACKUP=; }
put_round() {
  "${ON_CLIENT[@]}" "$BENCH" --endpoints $EP --server-pid $SERVER --conns 4 --clients 100 put --key-space-size "$KEYS" \
    --duration "$PUT_SECONDS" | awk '/^put / {ops = $4} /^server cpu/ {cpu = $6} END {print ops, cpu}'
}
echo "== put at 100 clients, no rate limit: $ROUNDS rounds of $PUT_SECONDS s without / with the backup (${BACKUP_SCHED[*]:-normal priority})"
: >"$WORK/rounds.txt"
for round in $(seq "$ROUNDS"); do
  without=$(put_round)
  start_backup
  with=$(put_round)
  echo "   (the backup's CPU since it started, catch-up included: $(awk '{printf "%.1f s", ($14 + $15) / 100}' /proc/$BACKUP/stat))"
  stop_backup
  echo "$without $with" | tee -a "$WORK/rounds.txt" | awk -v r="$round" \
    '{printf "round %d: without %.0f puts/s (%s us CPU/put), with %.0f puts/s (%s us CPU/put): %+.1f%%\n", r, $1, $2, $3, $4, 100 * ($3 / $1 - 1)}'
done
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
m_without=$(awk '{print $1}' "$WORK/rounds.txt" | median) m_with=$(awk '{print $3}' "$WORK/rounds.txt" | median)
c_without=$(awk '{print $2}' "$WORK/rounds.txt" | median) c_with=$(awk '{print $4}' "$WORK/rounds.txt" | median)
awk -v a="$m_without" -v b="$m_with" -v ca="$c_without" -v cb="$c_with" 'BEGIN {
  printf "medians: without %.0f puts/s, with %.0f puts/s: throughput cost %.1f%%; server CPU per put %.1f -> %.1f us\n", a, b, 100 * (1 - b / a), ca, cb }'
start_backup
echo "== with backup: put at $RATE/s for $SECONDS_ s, lag sampled every 100 ms"
( while kill -0 $BACKUP 2>/dev/null; do
    metric basalt_backup_lag_seconds; sleep 0.1
  done ) >"$WORK/lag.txt" &
SAMPLER=$!
"${ON_CLIENT[@]}" "$BENCH" --endpoints $EP --conns 4 --clients 100 put --key-space-size "$KEYS" --rate "$RATE" --duration "$SECONDS_" | grep -E "^(series|put )"
HEAD=$(metric basalt_backup_server_revision)
until [ "$(metric basalt_backup_durable_revision)" -ge "$HEAD" ]; do sleep 0.2; done
kill $SAMPLER 2>/dev/null || true
sort -g "$WORK/lag.txt" | awk '{a[NR]=$1} END {printf "lag samples %d: p50 %.3f s, p99 %.3f s, max %.3f s\n", NR, a[int(NR*0.5)+1], a[int(NR*0.99)+1], a[NR]}'
kill $BACKUP; wait $BACKUP 2>/dev/null || true; BACKUP=
"$BASALT" backup status "$WORK/backup" | grep -E "covered|gap" | tee "$WORK/status.txt"
# Issue 20's figure is a restore of the KEYS-key snapshot plus RESTORE_EVENTS (1,000,000) revisions
# of events; the restore to the head revision replays everything the run wrote after it.
SNAPSHOT_REVISION=$(sed -nE 's/^covered: revisions ([0-9]+)\.\..*/\1/p' "$WORK/status.txt")
TARGETS=($(( SNAPSHOT_REVISION + ${RESTORE_EVENTS:-1000000} )) "$HEAD")
for target in "${TARGETS[@]}"; do
  [ "$target" -le "$HEAD" ] || continue
  echo "== restore to revision $target ($(( target - SNAPSHOT_REVISION )) revisions after the snapshot)"
  rm -rf "$WORK/restored"
  /usr/bin/time -f "restore: %e s wall, %M KiB max RSS" "$BASALT" restore --backup-dir "$WORK/backup" --to-revision "$target" \
    --data-dir "$WORK/restored" --name r --initial-cluster r=http://127.0.0.1:$PEER --initial-advertise-peer-urls http://127.0.0.1:$PEER 2>&1 | grep -v "^basalt restore: replayed"
done
