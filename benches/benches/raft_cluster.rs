//! Raft through a 3-node in-memory cluster: committed entries per second and commit latency.
//! The network is an in-process queue and storage is `MemStorage` (no fsync), so the figures
//! are the consensus code's own cost: the ceiling raft puts on a server, before disks and
//! sockets. Run: `cargo bench -p basalt-bench --bench raft_cluster`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use basalt_raft::{ConfState, Config, EntryData, MemStorage, Message, RawNode, Role, Storage};
use hdrhistogram::Histogram;

const PAYLOAD_BYTES: usize = 128;
const RUN_TIME: Duration = Duration::from_secs(2);
/// Every node snapshots and compacts its log this often (in applied entries), as a server
/// would, so that the in-memory log stays bounded.
const COMPACT_EVERY_ENTRIES: u64 = 20_000;
/// Entries kept behind a compaction point so that followers catch up from the log.
const COMPACT_KEEP_ENTRIES: u64 = 1_000;

struct Cluster {
    nodes: Vec<RawNode<MemStorage>>,
    /// Applied index per node, tracked from the readies (cheaper than `status()`).
    applied: Vec<u64>,
    network: VecDeque<Message>,
}

impl Cluster {
    fn new() -> Cluster {
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        let nodes = (1..=3)
            .map(|id| {
                let cfg = Config {
                    id,
                    applied: 1,
                    inflight_msgs_max: 256,
                    msg_bytes_max: 1 << 20,
                    ..Config::default()
                };
                RawNode::new(cfg, MemStorage::new_with_conf_state(cs.clone())).expect("node")
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            applied: vec![1; 3],
            network: VecDeque::new(),
        };
        cluster.nodes[0].campaign();
        while cluster.nodes[0].status().soft_state.role != Role::Leader {
            cluster.round(|_| {});
        }
        // Let the new leader's empty entry commit.
        for _ in 0..10 {
            cluster.round(|_| {});
        }
        cluster
    }

    /// One pass: every node handles its Ready, then every queued message is delivered.
    /// `on_leader_apply` sees the indices the leader applies.
    fn round(&mut self, mut on_leader_apply: impl FnMut(u64)) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if !node.has_ready() {
                continue;
            }
            let mut rd = node.ready();
            self.network.extend(std::mem::take(&mut rd.messages));
            node.storage_mut().append(&rd.entries).expect("append");
            if let Some(hs) = rd.hard_state {
                node.storage_mut().set_hard_state(hs);
            }
            self.network
                .extend(std::mem::take(&mut rd.persisted_messages));
            if i == 0 {
                for e in &rd.committed_entries {
                    if matches!(&e.data, EntryData::Normal(d) if !d.is_empty()) {
                        on_leader_apply(e.index);
                    }
                }
            }
            if let Some(last) = rd.committed_entries.last() {
                self.applied[i] = last.index;
            }
            node.advance();
            let applied = self.applied[i];
            let first_index = node.storage().first_index().expect("first index");
            if applied >= first_index + COMPACT_EVERY_ENTRIES + COMPACT_KEEP_ENTRIES {
                let conf_state = node.status().conf_state;
                let storage = node.storage_mut();
                storage
                    .create_snapshot(applied, conf_state, Vec::new())
                    .expect("snapshot");
                storage
                    .compact(applied - COMPACT_KEEP_ENTRIES)
                    .expect("compact");
            }
        }
        while let Some(m) = self.network.pop_front() {
            let to = (m.to - 1) as usize;
            self.nodes[to].step(m);
        }
    }
}

/// CPU time this thread has used. The machine is shared, so entries per CPU-second is the
/// figure that does not depend on what else runs; wall-clock rates are printed beside it.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_THREAD_CPUTIME_ID is supported on
    // every Linux this runs on; the call only writes into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Keeps `in_flight` proposals outstanding, `batch` proposed per round; reports entries/s and
/// the latency from propose to the leader applying the entry.
fn run(name: &str, in_flight: usize, batch: usize) {
    let mut cluster = Cluster::new();
    let mut latency_ns = Histogram::<u64>::new(3).expect("histogram");
    let mut proposed_at: VecDeque<(u64, Instant)> = VecDeque::new();
    let payload = vec![7u8; PAYLOAD_BYTES];
    let mut committed = 0u64;
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    while start.elapsed() < RUN_TIME {
        let room = in_flight.saturating_sub(proposed_at.len()).min(batch);
        for _ in 0..room {
            let index = cluster.nodes[0]
                .propose(payload.clone())
                .expect("leader accepts");
            proposed_at.push_back((index, Instant::now()));
        }
        cluster.round(|index| {
            let (proposed_index, at) = proposed_at.pop_front().expect("applied entry was proposed");
            assert_eq!(proposed_index, index, "entries apply in proposal order");
            latency_ns
                .record(at.elapsed().as_nanos() as u64)
                .expect("record");
            committed += 1;
        });
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = (thread_cpu_time() - cpu_start).as_secs_f64();
    println!(
        "{name:<26} in_flight={in_flight:<5} batch={batch:<4} {:>8.0} entries/cpu-s {:>8.0} entries/s  latency p50={:.1}us p99={:.1}us",
        committed as f64 / cpu_secs,
        committed as f64 / secs,
        latency_ns.value_at_quantile(0.50) as f64 / 1e3,
        latency_ns.value_at_quantile(0.99) as f64 / 1e3,
    );
}

fn main() {
    println!(
        "raft 3-node in-memory cluster, {PAYLOAD_BYTES} B entries, {}s per case",
        RUN_TIME.as_secs()
    );
    run("serial (one at a time)", 1, 1);
    run("pipelined, 1 per round", 64, 1);
    run("pipelined, batched", 1024, 64);
    run("pipelined, large batches", 8192, 512);
}
