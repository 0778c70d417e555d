//! Deterministic cluster simulation. One seed drives everything: the workload, message loss,
//! delay, reordering and duplication, symmetric and asymmetric partitions, crashes (losing
//! whatever was not yet persisted, including mid-write), restarts, membership changes,
//! leadership transfers and snapshots. Safety invariants are checked after every step
//! (`checker`), the client history is checked for linearizability at the end
//! (`linearizability`), and after the faults stop the cluster must converge.
//!
//! `cargo test -p basalt-raft` runs 10,000 seeds; `RAFT_SEEDS=N` (and `RAFT_SEED_START`) runs
//! others. A failing seed prints its replay command: `RAFT_SEED=S RAFT_TRACE=1 cargo test -p
//! basalt-raft --lib sim::tests::replay_seed -- --nocapture` reruns it alone with a trace of
//! every message and fault.

mod checker;
mod linearizability;
mod network;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::message::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfChangeTransition, ConfState, EntryData,
    MessageType, NodeId,
};
use crate::raft::{Config, Role};
use crate::raw_node::{RawNode, Ready, SnapshotStatus};
use crate::read_only::ReadOnlyOption;
use crate::rng::Rng;
use crate::storage::{MemStorage, Storage};
use checker::{LogChain, SafetyChecker};
use linearizability::{Op, OpKind};
use network::{Fate, Network, NetworkFaults};

/// Simulated time units per raft tick.
const TICK_UNITS: u64 = 10;

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub voters_initial: u64,
    /// Ids after the founders that membership changes may add.
    pub spare_nodes: u64,
    /// Time units with faults and client load.
    pub fault_duration: u64,
    /// Time units the cluster gets to converge once faults stop.
    pub settle_max: u64,
    pub network: NetworkFaults,
    pub partition_ppm: u32,
    pub heal_ppm: u32,
    pub crash_ppm: u32,
    pub restart_ppm: u32,
    /// Chance, per `Ready` handled, of crashing after the early messages left but before the
    /// write completed.
    pub crash_mid_write_ppm: u32,
    /// Chance, per `Ready`, that its write completes later (up to `write_delay_max` time
    /// units), with messages stepped and ticks taken in between.
    pub async_write_ppm: u32,
    pub write_delay_max: u64,
    pub conf_change_ppm: u32,
    pub transfer_ppm: u32,
    /// A node snapshots after applying this many entries, keeping `compact_keep` of them.
    pub snapshot_every: u64,
    pub compact_keep: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub read_only: ReadOnlyOption,
    pub msg_bytes_max: u64,
    pub inflight_msgs_max: usize,
    pub clients: usize,
    pub keys: u64,
    pub op_gap_max: u64,
    pub op_timeout: u64,
    pub trace: bool,
    #[cfg(test)]
    pub broken_rule: Option<crate::raft::BrokenRule>,
}

impl SimOptions {
    /// Options drawn from the seed, so that the seed alone names the whole run.
    pub fn from_seed(seed: u64) -> SimOptions {
        let mut rng = Rng::new(seed ^ 0x5EED_0F0A_75ED);
        let check_quorum = rng.chance(800_000);
        SimOptions {
            seed,
            voters_initial: if rng.chance(600_000) { 3 } else { 5 },
            spare_nodes: 2,
            fault_duration: 3_000,
            settle_max: 6_000,
            network: NetworkFaults {
                drop_ppm: rng.range(0, 100_000) as u32,
                duplicate_ppm: rng.range(0, 30_000) as u32,
                delay_min: 1,
                delay_max: rng.range(2, 30),
            },
            partition_ppm: rng.range(0, 1_500) as u32,
            heal_ppm: 1_000,
            crash_ppm: rng.range(0, 1_200) as u32,
            restart_ppm: 3_000,
            crash_mid_write_ppm: rng.range(0, 3_000) as u32,
            async_write_ppm: if rng.chance(700_000) {
                rng.range(300_000, 900_000) as u32
            } else {
                0
            },
            write_delay_max: rng.range(1, 8),
            conf_change_ppm: if rng.chance(600_000) {
                rng.range(500, 2_500) as u32
            } else {
                0
            },
            transfer_ppm: rng.range(0, 1_000) as u32,
            snapshot_every: rng.range(5, 40),
            compact_keep: rng.range(0, 10),
            pre_vote: rng.chance(700_000),
            check_quorum,
            read_only: if check_quorum && rng.chance(400_000) {
                ReadOnlyOption::LeaseBased
            } else {
                ReadOnlyOption::Safe
            },
            msg_bytes_max: rng.range(40, 400),
            inflight_msgs_max: rng.range(1, 8) as usize,
            clients: 3,
            keys: 3,
            op_gap_max: 40,
            op_timeout: 500,
            trace: false,
            #[cfg(test)]
            broken_rule: None,
        }
    }
}

/// What a run did, to show the faults and features were actually exercised.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub ops_completed: u64,
    pub reads_completed: u64,
    pub leaders_elected: u64,
    pub crashes: u64,
    pub crashes_mid_write: u64,
    pub writes_deferred: u64,
    pub snapshots_installed: u64,
    pub conf_changes_applied: u64,
    pub joint_entered: u64,
    pub transfers_started: u64,
    pub leaders_removed: u64,
    pub messages_dropped: u64,
}

impl SimStats {
    pub fn add(&mut self, other: &SimStats) {
        self.ops_completed += other.ops_completed;
        self.reads_completed += other.reads_completed;
        self.leaders_elected += other.leaders_elected;
        self.crashes += other.crashes;
        self.crashes_mid_write += other.crashes_mid_write;
        self.writes_deferred += other.writes_deferred;
        self.snapshots_installed += other.snapshots_installed;
        self.conf_changes_applied += other.conf_changes_applied;
        self.joint_entered += other.joint_entered;
        self.transfers_started += other.transfers_started;
        self.leaders_removed += other.leaders_removed;
        self.messages_dropped += other.messages_dropped;
    }
}

enum ClientState {
    Idle {
        next_op_at: u64,
    },
    Waiting {
        op: usize,
        node: NodeId,
        deadline: u64,
    },
}

struct Client {
    state: ClientState,
    leader_hint: Option<NodeId>,
}

struct SimNode {
    id: NodeId,
    /// None while crashed, stopped, or not yet started.
    raw: Option<RawNode<MemStorage>>,
    /// The durable state while the node is down.
    durable: Option<MemStorage>,
    kv: BTreeMap<u64, u64>,
    applied: u64,
    conf_state: ConfState,
    log: LogChain,
    /// Writes proposed here, by op id, waiting to be applied here.
    pending_writes: BTreeMap<u64, usize>,
    /// Reads requested here, by op id, waiting for their ReadState.
    pending_reads: BTreeMap<u64, usize>,
    /// (read index, op id): confirmed reads waiting for apply to catch up.
    confirmed_reads: Vec<(u64, u64)>,
    last_snapshot: u64,
    /// Removed from the configuration: stopped for good after this time.
    stop_at: Option<u64>,
    stopped: bool,
    /// A `Ready` whose disk write is in flight until the given time.
    writing: Option<(Ready, u64)>,
}

impl SimNode {
    fn is_up(&self) -> bool {
        self.raw.is_some()
    }
}

pub struct World {
    opts: SimOptions,
    rng: Rng,
    now: u64,
    /// The linearizability clock: one tick per call or return.
    events: u64,
    nodes: Vec<SimNode>,
    net: Network,
    checker: SafetyChecker,
    history: Vec<Op>,
    clients: Vec<Client>,
    next_value: u64,
    next_spare: NodeId,
    stats: SimStats,
}

fn encode_write(op: u64, key: u64, value: u64) -> Vec<u8> {
    [op, key, value]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn decode_write(data: &[u8]) -> (u64, u64, u64) {
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    (word(0), word(1), word(2))
}

fn encode_kv(kv: &BTreeMap<u64, u64>) -> Vec<u8> {
    kv.iter()
        .flat_map(|(k, v)| k.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect()
}

fn decode_kv(data: &[u8]) -> BTreeMap<u64, u64> {
    data.chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8")),
                u64::from_le_bytes(c[8..].try_into().expect("8")),
            )
        })
        .collect()
}

impl World {
    pub fn new(opts: SimOptions) -> World {
        let founders: Vec<NodeId> = (1..=opts.voters_initial).collect();
        let conf_state = ConfState {
            voters: founders.clone(),
            ..ConfState::default()
        };
        let mut nodes = Vec::new();
        for id in 1..=opts.voters_initial + opts.spare_nodes {
            let founder = id <= opts.voters_initial;
            nodes.push(SimNode {
                id,
                raw: None,
                durable: Some(if founder {
                    MemStorage::new_with_conf_state(conf_state.clone())
                } else {
                    MemStorage::new()
                }),
                kv: BTreeMap::new(),
                applied: 0,
                conf_state: ConfState::default(),
                log: if founder {
                    SafetyChecker::founder_chain()
                } else {
                    SafetyChecker::joiner_chain()
                },
                pending_writes: BTreeMap::new(),
                pending_reads: BTreeMap::new(),
                confirmed_reads: Vec::new(),
                last_snapshot: 0,
                stop_at: None,
                stopped: false,
                writing: None,
            });
        }
        let mut world = World {
            rng: Rng::new(opts.seed),
            now: 0,
            events: 0,
            nodes,
            net: Network::new(opts.network.clone()),
            checker: SafetyChecker::new(),
            history: Vec::new(),
            clients: (0..opts.clients)
                .map(|_| Client {
                    state: ClientState::Idle { next_op_at: 0 },
                    leader_hint: None,
                })
                .collect(),
            next_value: 1,
            next_spare: opts.voters_initial + 1,
            stats: SimStats::default(),
            opts,
        };
        for id in founders {
            world.start(id);
        }
        world
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            eprintln!("[t={}] {}", self.now, what());
        }
    }

    fn node_config(&self, id: NodeId, applied: u64) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            applied,
            msg_bytes_max: self.opts.msg_bytes_max,
            inflight_msgs_max: self.opts.inflight_msgs_max,
            inflight_bytes_max: self.opts.msg_bytes_max * 4,
            uncommitted_bytes_max: 16 << 10,
            committed_bytes_max_per_ready: 1 << 10,
            pending_reads_max: 64,
            check_quorum: self.opts.check_quorum,
            pre_vote: self.opts.pre_vote,
            read_only: self.opts.read_only,
            seed: self.opts.seed,
            broken_rule: self.opts.broken_rule,
        }
    }

    /// Starts (or restarts) a node from its durable state.
    fn start(&mut self, id: NodeId) {
        let idx = (id - 1) as usize;
        let storage = self.nodes[idx]
            .durable
            .take()
            .expect("a node starts from durable state");
        let snapshot = storage.snapshot().expect("mem storage snapshot");
        let applied = snapshot.metadata.index;
        let config = self.node_config(id, applied);
        let node = &mut self.nodes[idx];
        node.raw = Some(RawNode::new(config, storage).expect("node starts"));
        node.kv = decode_kv(&snapshot.data);
        node.applied = applied;
        node.last_snapshot = applied;
        node.conf_state = snapshot.metadata.conf_state;
        self.trace(|| format!("start {id} applied={applied}"));
    }

    /// Kills a node: whatever it had not persisted is lost. A write in flight may be torn:
    /// its entries made it to disk but not the hard state.
    fn crash(&mut self, idx: usize) -> Result<(), String> {
        let id = self.nodes[idx].id;
        if let Some((rd, _)) = self.nodes[idx].writing.take() {
            if rd.snapshot.is_none() && self.rng.chance(500_000) {
                let node = &mut self.nodes[idx];
                let raw = node.raw.as_mut().expect("live");
                raw.storage_mut().append(&rd.entries).expect("append");
                self.checker
                    .observe_persisted(id, &mut node.log, &rd.entries)?;
            }
        }
        let node = &mut self.nodes[idx];
        let raw = node.raw.take().expect("crashing a live node");
        node.durable = Some(raw.storage().clone());
        node.pending_writes.clear();
        node.pending_reads.clear();
        node.confirmed_reads.clear();
        self.stats.crashes += 1;
        self.trace(|| format!("crash {id}"));
        Ok(())
    }

    fn stop(&mut self, idx: usize) {
        let node = &mut self.nodes[idx];
        node.raw = None;
        node.writing = None;
        node.durable = None;
        node.stopped = true;
        let id = node.id;
        self.trace(|| format!("stop removed node {id}"));
    }

    fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect()
    }

    fn all_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        Some(items[self.rng.range(0, items.len() as u64) as usize])
    }

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.raw.as_ref().map(|r| (i, r.raft())))
            .filter(|(_, r)| r.role == Role::Leader)
            .max_by_key(|(_, r)| r.term)
            .map(|(i, _)| i)
    }

    fn next_event(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    // ---- the main loop ----

    pub fn run(mut self) -> Result<SimStats, String> {
        let result = self.run_inner();
        self.stats.messages_dropped = self.net.dropped;
        result.map(|()| self.stats)
    }

    fn run_inner(&mut self) -> Result<(), String> {
        while self.now < self.opts.fault_duration {
            self.step(true)?;
            self.now += 1;
        }
        self.trace(|| "faults stop; settling".to_string());
        self.net.heal();
        self.net.faults.drop_ppm = 0;
        self.net.faults.duplicate_ppm = 0;
        let deadline = self.now + self.opts.settle_max;
        while self.now < deadline {
            for idx in 0..self.nodes.len() {
                if !self.nodes[idx].is_up()
                    && !self.nodes[idx].stopped
                    && self.nodes[idx].durable.is_some()
                    && self.was_started(idx)
                {
                    let id = self.nodes[idx].id;
                    self.start(id);
                }
            }
            self.step(false)?;
            self.now += 1;
            if self.converged() {
                return self.final_checks();
            }
        }
        Err(format!(
            "no convergence within {} time units after faults stopped",
            self.opts.settle_max
        ))
    }

    /// Whether the node was ever started (spares wait in `durable` until added).
    fn was_started(&self, idx: usize) -> bool {
        let id = self.nodes[idx].id;
        id <= self.opts.voters_initial || id < self.next_spare
    }

    fn step(&mut self, faults: bool) -> Result<(), String> {
        if faults {
            self.inject_faults()?;
        }
        self.deliver_due();
        if self.now.is_multiple_of(TICK_UNITS) {
            for node in self.nodes.iter_mut() {
                if let Some(raw) = node.raw.as_mut() {
                    raw.tick();
                }
            }
        }
        if faults {
            self.run_clients();
        }
        for idx in 0..self.nodes.len() {
            self.handle_ready(idx)?;
        }
        self.expire_client_ops();
        self.check_leaders()
    }

    fn check_leaders(&mut self) -> Result<(), String> {
        for idx in 0..self.nodes.len() {
            let Some(raw) = self.nodes[idx].raw.as_ref() else {
                continue;
            };
            let raft = raw.raft();
            if raft.role != Role::Leader {
                continue;
            }
            let (id, term) = (raft.id, raft.term);
            if self.checker.observe_leader(id, term)? {
                self.checker
                    .check_leader_completeness(id, term, |i| raft.log.term(i))?;
            }
        }
        Ok(())
    }

    // ---- faults ----

    fn inject_faults(&mut self) -> Result<(), String> {
        let all = self.all_ids();
        if self.rng.chance(self.opts.partition_ppm) {
            match self.rng.range(0, 4) {
                3 => {
                    // The classic: cut the leader off while clients can still reach it.
                    if let Some(leader) = self.leader() {
                        let id = self.nodes[leader].id;
                        self.trace(|| format!("isolate leader {id}"));
                        self.net.isolate(id, &all);
                    }
                }
                0 => {
                    if let Some(id) = self.pick(&all) {
                        self.trace(|| format!("isolate {id}"));
                        self.net.isolate(id, &all);
                    }
                }
                1 => {
                    let side: Vec<NodeId> = all
                        .iter()
                        .copied()
                        .filter(|_| self.rng.chance(500_000))
                        .collect();
                    self.trace(|| format!("split {side:?}"));
                    self.net.split(&side, &all);
                }
                _ => {
                    if let (Some(a), Some(b)) = (self.pick(&all), self.pick(&all)) {
                        if a != b {
                            self.trace(|| format!("block {a} -> {b}"));
                            self.net.blocked.insert((a, b));
                        }
                    }
                }
            }
        }
        if self.rng.chance(self.opts.heal_ppm) {
            self.trace(|| "heal".to_string());
            self.net.heal();
        }
        if self.rng.chance(self.opts.crash_ppm) {
            let live: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].is_up())
                .collect();
            if let Some(idx) = self.pick(&live) {
                self.crash(idx)?;
            }
        }
        if self.rng.chance(self.opts.restart_ppm) {
            let down: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| {
                    !self.nodes[i].is_up() && !self.nodes[i].stopped && self.was_started(i)
                })
                .collect();
            if let Some(idx) = self.pick(&down) {
                let id = self.nodes[idx].id;
                self.start(id);
            }
        }
        if self.rng.chance(self.opts.conf_change_ppm) {
            self.propose_conf_change();
        }
        if self.rng.chance(self.opts.transfer_ppm) {
            self.transfer_leader();
        }
        Ok(())
    }

    fn propose_conf_change(&mut self) {
        let Some(leader) = self.leader() else { return };
        let cs = self.nodes[leader]
            .raw
            .as_ref()
            .expect("leader is up")
            .raft()
            .conf_state();
        if !cs.voters_outgoing.is_empty() {
            return;
        }
        let single = |kind, node_id| ConfChangeSingle { kind, node_id };
        let spare_left = self.next_spare <= self.opts.voters_initial + self.opts.spare_nodes;
        let voter = self.pick(&cs.voters).expect("a configuration has voters");
        let learner = self.pick(&cs.learners);
        let cc = match (self.rng.range(0, 6), learner) {
            (0, _) if spare_left => {
                let id = self.next_spare;
                self.next_spare += 1;
                self.start(id);
                ConfChange::single(ConfChangeKind::AddLearner, id)
            }
            (1, Some(l)) => ConfChange::single(ConfChangeKind::AddVoter, l),
            (2, _) if cs.voters.len() > 3 => ConfChange::single(ConfChangeKind::RemoveNode, voter),
            (3, Some(l)) => ConfChange {
                changes: vec![
                    single(ConfChangeKind::AddVoter, l),
                    single(ConfChangeKind::RemoveNode, voter),
                ],
                transition: ConfChangeTransition::Auto,
                context: Vec::new(),
            },
            (4, _) if cs.voters.len() > 3 => ConfChange {
                changes: vec![single(ConfChangeKind::AddLearner, voter)],
                transition: ConfChangeTransition::JointImplicit,
                context: Vec::new(),
            },
            (5, Some(l)) => ConfChange::single(ConfChangeKind::RemoveNode, l),
            _ => return,
        };
        let raw = self.nodes[leader].raw.as_mut().expect("leader is up");
        let result = raw.propose_conf_change(cc.clone());
        self.trace(|| format!("propose {cc:?}: {result:?}"));
    }

    fn transfer_leader(&mut self) {
        let Some(leader) = self.leader() else { return };
        let raw = self.nodes[leader].raw.as_mut().expect("leader is up");
        let voters = raw.raft().conf_state().voters;
        let Some(to) = self.pick(&voters) else { return };
        let raw = self.nodes[leader].raw.as_mut().expect("leader is up");
        if raw.transfer_leader(to).is_ok() {
            self.stats.transfers_started += 1;
            self.trace(|| format!("transfer leadership to {to}"));
        }
    }

    // ---- network ----

    fn send(&mut self, m: crate::message::Message) {
        self.trace(|| {
            format!(
                "send {:?} {}->{} t{} i{} lt{} c{} n{} rej{} ctx{}",
                m.kind,
                m.from,
                m.to,
                m.term,
                m.index,
                m.log_term,
                m.commit,
                m.entries.len(),
                m.reject,
                m.context.len()
            )
        });
        let now = self.now;
        if let Fate::Dropped(m) = self.net.send(m, now, &mut self.rng) {
            self.report_loss(&m);
        }
    }

    /// A message was lost. Like a transport whose connection broke, tell the sender now and
    /// then: a failed snapshot always (or the follower waits forever), others sometimes.
    fn report_loss(&mut self, m: &crate::message::Message) {
        let report_unreachable = self.rng.chance(200_000);
        let Some(raw) = self.nodes[(m.from - 1) as usize].raw.as_mut() else {
            return;
        };
        if m.kind == MessageType::Snap {
            raw.report_snapshot(m.to, SnapshotStatus::Failed);
        } else if report_unreachable {
            raw.report_unreachable(m.to);
        }
    }

    fn deliver_due(&mut self) {
        while let Some((m, blocked)) = self.net.pop_due(self.now) {
            let to = (m.to - 1) as usize;
            if blocked || !self.nodes[to].is_up() {
                self.report_loss(&m);
                continue;
            }
            let (kind, from, to_id) = (m.kind, m.from, m.to);
            self.nodes[to].raw.as_mut().expect("checked up").step(m);
            if kind == MessageType::Snap {
                if let Some(raw) = self.nodes[(from - 1) as usize].raw.as_mut() {
                    raw.report_snapshot(to_id, SnapshotStatus::Delivered);
                }
            }
        }
    }

    // ---- clients ----

    fn run_clients(&mut self) {
        for c in 0..self.clients.len() {
            let ClientState::Idle { next_op_at } = self.clients[c].state else {
                continue;
            };
            if next_op_at > self.now {
                continue;
            }
            let live = self.live_ids();
            // Mostly follow the leader hint; sometimes ask any node (a follower forwards reads).
            let follow_hint = self.rng.chance(700_000);
            let target = match self.clients[c].leader_hint {
                Some(hint) if follow_hint && live.contains(&hint) => hint,
                _ => match self.pick(&live) {
                    Some(id) => id,
                    None => continue,
                },
            };
            self.issue_op(c, target);
        }
    }

    fn issue_op(&mut self, client: usize, target: NodeId) {
        let key = self.rng.range(0, self.opts.keys);
        let is_write = self.rng.chance(500_000);
        let op = self.history.len() as u64;
        let idx = (target - 1) as usize;
        let raw = self.nodes[idx].raw.as_mut().expect("target is live");
        let result = if is_write {
            let value = self.next_value;
            let r = raw.propose(encode_write(op, key, value));
            r.map(|_| OpKind::Write(value))
        } else {
            raw.read_index(op.to_le_bytes().to_vec())
                .map(|()| OpKind::Read(None))
        };
        let gap = self.rng.range(1, self.opts.op_gap_max);
        match result {
            Ok(kind) => {
                if let OpKind::Write(_) = kind {
                    self.next_value += 1;
                    self.nodes[idx].pending_writes.insert(op, client);
                } else {
                    self.nodes[idx].pending_reads.insert(op, client);
                }
                let call = self.next_event();
                self.history.push(Op {
                    key,
                    kind,
                    call,
                    ret: None,
                });
                self.clients[client].state = ClientState::Waiting {
                    op: op as usize,
                    node: target,
                    deadline: self.now + self.opts.op_timeout,
                };
            }
            Err(crate::error::ProposalError::NotLeader { leader_hint }) => {
                self.clients[client].leader_hint = leader_hint;
                self.clients[client].state = ClientState::Idle {
                    next_op_at: self.now + gap,
                };
            }
            Err(_) => {
                self.clients[client].leader_hint = None;
                self.clients[client].state = ClientState::Idle {
                    next_op_at: self.now + gap,
                };
            }
        }
    }

    fn complete_op(&mut self, client: usize, op: u64, read_value: Option<Option<u64>>) {
        let ret = self.next_event();
        let entry = &mut self.history[op as usize];
        entry.ret = Some(ret);
        if let Some(v) = read_value {
            entry.kind = OpKind::Read(v);
            self.stats.reads_completed += 1;
        }
        self.stats.ops_completed += 1;
        let gap = self.rng.range(1, self.opts.op_gap_max);
        self.clients[client].state = ClientState::Idle {
            next_op_at: self.now + gap,
        };
    }

    fn expire_client_ops(&mut self) {
        for c in 0..self.clients.len() {
            let ClientState::Waiting { op, node, deadline } = self.clients[c].state else {
                continue;
            };
            let idx = (node - 1) as usize;
            let node_lost_it = !self.nodes[idx].pending_writes.contains_key(&(op as u64))
                && !self.nodes[idx].pending_reads.contains_key(&(op as u64))
                && !self.nodes[idx]
                    .confirmed_reads
                    .iter()
                    .any(|&(_, o)| o == op as u64);
            if deadline <= self.now || node_lost_it {
                // The outcome stays unknown: no return time in the history.
                self.nodes[idx].pending_writes.remove(&(op as u64));
                self.nodes[idx].pending_reads.remove(&(op as u64));
                self.nodes[idx]
                    .confirmed_reads
                    .retain(|&(_, o)| o != op as u64);
                self.clients[c].state = ClientState::Idle {
                    next_op_at: self.now + 1,
                };
                self.clients[c].leader_hint = None;
            }
        }
    }

    // ---- the application loop of one node ----

    fn handle_ready(&mut self, idx: usize) -> Result<(), String> {
        let id = self.nodes[idx].id;
        if let Some((_, done_at)) = &self.nodes[idx].writing {
            if *done_at <= self.now {
                let (rd, _) = self.nodes[idx].writing.take().expect("checked");
                return self.complete_ready(idx, rd);
            }
            return Ok(());
        }
        let Some(raw) = self.nodes[idx].raw.as_mut() else {
            return Ok(());
        };
        if !raw.has_ready() {
            return Ok(());
        }
        let mut rd = raw.ready();
        if let Some(ss) = rd.soft_state {
            if ss.role == Role::Leader {
                self.stats.leaders_elected += 1;
                self.trace(|| format!("node {id} became leader"));
            }
        }
        for m in std::mem::take(&mut rd.messages) {
            self.send(m);
        }
        if self.rng.chance(self.opts.crash_mid_write_ppm) {
            self.stats.crashes_mid_write += 1;
            self.nodes[idx].writing = Some((rd, u64::MAX));
            return self.crash(idx);
        }
        if self.rng.chance(self.opts.async_write_ppm) {
            // The write takes a while; the node keeps stepping messages meanwhile.
            let done_at = self.now + self.rng.range(1, self.opts.write_delay_max + 1);
            self.stats.writes_deferred += 1;
            self.nodes[idx].writing = Some((rd, done_at));
            return Ok(());
        }
        self.complete_ready(idx, rd)
    }

    /// The write of `rd` completed: persist, send what waited for it, apply, advance.
    fn complete_ready(&mut self, idx: usize, mut rd: Ready) -> Result<(), String> {
        let id = self.nodes[idx].id;
        // Persist: snapshot, entries, hard state.
        {
            let node = &mut self.nodes[idx];
            let raw = node.raw.as_mut().expect("live");
            if let Some(snapshot) = &rd.snapshot {
                raw.storage_mut()
                    .apply_snapshot(snapshot.clone())
                    .expect("apply snapshot");
                self.checker.observe_snapshot(
                    id,
                    &mut node.log,
                    snapshot.metadata.index,
                    snapshot.metadata.term,
                )?;
            }
            raw.storage_mut().append(&rd.entries).expect("append");
            self.checker
                .observe_persisted(id, &mut node.log, &rd.entries)?;
            if let Some(hs) = rd.hard_state {
                raw.storage_mut().set_hard_state(hs);
            }
        }
        for m in std::mem::take(&mut rd.persisted_messages) {
            self.send(m);
        }
        // Apply.
        if let Some(snapshot) = &rd.snapshot {
            let node = &mut self.nodes[idx];
            node.kv = decode_kv(&snapshot.data);
            node.applied = snapshot.metadata.index;
            node.last_snapshot = snapshot.metadata.index;
            node.conf_state = snapshot.metadata.conf_state.clone();
            self.stats.snapshots_installed += 1;
            self.trace(|| {
                format!(
                    "node {id} installed snapshot at {}",
                    snapshot.metadata.index
                )
            });
        }
        for entry in &rd.committed_entries {
            self.checker.observe_applied(id, entry)?;
            let node = &mut self.nodes[idx];
            if entry.index != node.applied + 1 {
                return Err(format!(
                    "node {id} applied {} after {}",
                    entry.index, node.applied
                ));
            }
            node.applied = entry.index;
            match &entry.data {
                EntryData::Normal(data) if data.is_empty() => {}
                EntryData::Normal(data) => {
                    let (op, key, value) = decode_write(data);
                    node.kv.insert(key, value);
                    if let Some(client) = node.pending_writes.remove(&op) {
                        self.complete_op(client, op, None);
                    }
                }
                EntryData::ConfChange(cc) => self.apply_conf_change(idx, cc),
            }
        }
        let node = &mut self.nodes[idx];
        for rs in std::mem::take(&mut rd.read_states) {
            let op = u64::from_le_bytes(rs.request_ctx.as_slice().try_into().expect("op id ctx"));
            if node.pending_reads.remove(&op).is_some() {
                node.confirmed_reads.push((rs.index, op));
            }
        }
        let Some(raw) = node.raw.as_mut() else {
            return Ok(());
        };
        raw.advance();
        self.serve_reads(idx);
        self.maybe_snapshot(idx);
        if self.nodes[idx].stop_at.is_some_and(|t| t <= self.now) {
            self.stop(idx);
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, idx: usize, cc: &ConfChange) {
        let node = &mut self.nodes[idx];
        let raw = node.raw.as_mut().expect("live");
        let was_leader = raw.raft().role == Role::Leader;
        let Ok(cs) = raw.apply_conf_change(cc) else {
            return;
        };
        node.conf_state = cs.clone();
        if !was_leader {
            return;
        }
        self.stats.conf_changes_applied += 1;
        if !cs.voters_outgoing.is_empty() {
            self.stats.joint_entered += 1;
        }
        let id = node.id;
        self.trace(|| format!("leader {id} applied {cc:?} -> {cs:?}"));
        // Like a server shutting down a removed member, once the leader has applied it.
        let members: Vec<NodeId> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .copied()
            .collect();
        for other in 0..self.nodes.len() {
            let n = &mut self.nodes[other];
            let started = n.id <= self.opts.voters_initial || n.id < self.next_spare;
            if started && !members.contains(&n.id) && !n.stopped && n.stop_at.is_none() {
                if n.id == id {
                    self.stats.leaders_removed += 1;
                }
                // Let it send what it already queued (a removed leader's TimeoutNow).
                n.stop_at = Some(self.now + 1);
            }
        }
    }

    fn serve_reads(&mut self, idx: usize) {
        let applied = self.nodes[idx].applied;
        let confirmed = std::mem::take(&mut self.nodes[idx].confirmed_reads);
        let (ready, waiting): (Vec<_>, Vec<_>) = confirmed
            .into_iter()
            .partition(|&(index, _)| index <= applied);
        self.nodes[idx].confirmed_reads = waiting;
        for (_, op) in ready {
            let Some(client) = self.clients.iter().position(
                |c| matches!(c.state, ClientState::Waiting { op: o, .. } if o as u64 == op),
            ) else {
                continue;
            };
            let key = self.history[op as usize].key;
            let value = self.nodes[idx].kv.get(&key).copied();
            self.complete_op(client, op, Some(value));
        }
    }

    fn maybe_snapshot(&mut self, idx: usize) {
        let node = &mut self.nodes[idx];
        if node.applied < node.last_snapshot + self.opts.snapshot_every {
            return;
        }
        let Some(raw) = node.raw.as_mut() else { return };
        let data = encode_kv(&node.kv);
        raw.storage_mut()
            .create_snapshot(node.applied, node.conf_state.clone(), data)
            .expect("snapshot at the applied index");
        node.last_snapshot = node.applied;
        let compact_to = node.applied.saturating_sub(self.opts.compact_keep);
        if compact_to >= raw.storage().first_index().expect("first index") {
            raw.storage_mut().compact(compact_to).expect("compact");
        }
    }

    // ---- the end ----

    fn converged(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let raft = self.nodes[leader]
            .raw
            .as_ref()
            .expect("leader is up")
            .raft();
        let cs = raft.conf_state();
        if !cs.voters_outgoing.is_empty()
            || !raft.committed_entry_in_current_term()
            || raft.log.committed < self.checker.max_applied_index()
        {
            return false;
        }
        let committed = raft.log.committed;
        cs.voters.iter().chain(&cs.learners).all(|&id| {
            self.nodes[(id - 1) as usize].raw.as_ref().is_some_and(|r| {
                r.raft().log.applied == committed
                    && self.nodes[(id - 1) as usize].applied == committed
            })
        })
    }

    fn final_checks(&mut self) -> Result<(), String> {
        let leader = self.leader().expect("converged");
        let cs = self.nodes[leader]
            .raw
            .as_ref()
            .expect("up")
            .raft()
            .conf_state();
        let reference = &self.nodes[leader].kv;
        for &id in cs.voters.iter().chain(&cs.learners) {
            if &self.nodes[(id - 1) as usize].kv != reference {
                return Err(format!(
                    "state machines differ between leader {} and {id}",
                    leader + 1
                ));
            }
        }
        linearizability::check(&self.history)
    }
}

/// Runs one seed; the error names the seed and how to replay it.
pub fn run_seed(opts: SimOptions) -> Result<SimStats, String> {
    let seed = opts.seed;
    World::new(opts).run().map_err(|e| {
        format!(
            "seed {seed} failed: {e}\n  replay: {}",
            replay_command(seed)
        )
    })
}

pub fn replay_command(seed: u64) -> String {
    format!("RAFT_SEED={seed} RAFT_TRACE=1 cargo test -p basalt-raft --lib sim::tests::replay_seed -- --nocapture")
}
