//! The test cluster shared by the behaviour tests and the scenario scripts: real `RawNode`s
//! over `MemStorage`, handling each `Ready` exactly as the contract says, with message
//! delivery under the test's control.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use basalt_raft::{
    ConfState, Config, EntryData, MemStorage, Message, NodeId, RawNode, ReadState, Ready, Role,
    Storage,
};

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, RawNode<MemStorage>>,
    /// Messages sent and not yet delivered.
    pub queue: VecDeque<Message>,
    /// Directed links that drop everything.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub applied: BTreeMap<NodeId, Vec<Vec<u8>>>,
    pub read_states: BTreeMap<NodeId, Vec<ReadState>>,
    pub config: Config,
}

pub fn config(id: NodeId) -> Config {
    Config {
        id,
        election_ticks: 10,
        heartbeat_ticks: 1,
        seed: 7,
        ..Config::default()
    }
}

impl Cluster {
    pub fn new(voters: &[NodeId], learners: &[NodeId], tweak: impl Fn(&mut Config)) -> Cluster {
        let cs = ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        };
        let mut base = config(1);
        tweak(&mut base);
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            blocked: BTreeSet::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            config: base,
        };
        for &id in voters.iter().chain(learners) {
            cluster.start(id, MemStorage::new_with_conf_state(cs.clone()));
        }
        cluster
    }

    pub fn start(&mut self, id: NodeId, storage: MemStorage) {
        let applied = storage.snapshot().unwrap().metadata.index;
        let node = RawNode::new(
            Config {
                id,
                applied,
                ..self.config.clone()
            },
            storage,
        )
        .unwrap();
        self.nodes.insert(id, node);
    }

    pub fn node(&mut self, id: NodeId) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Persists a ready exactly as the contract says and queues its messages.
    pub fn handle(&mut self, id: NodeId, mut rd: Ready) {
        self.queue.extend(std::mem::take(&mut rd.messages));
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(s) = rd.snapshot.clone() {
            node.storage_mut().apply_snapshot(s).unwrap();
        }
        node.storage_mut().append(&rd.entries).unwrap();
        if let Some(hs) = rd.hard_state {
            node.storage_mut().set_hard_state(hs);
        }
        self.queue
            .extend(std::mem::take(&mut rd.persisted_messages));
        for e in &rd.committed_entries {
            match &e.data {
                EntryData::Normal(d) if d.is_empty() => {}
                EntryData::Normal(d) => self.applied.entry(id).or_default().push(d.clone()),
                EntryData::ConfChange(cc) => {
                    node.apply_conf_change(cc).unwrap();
                }
            }
        }
        self.read_states
            .entry(id)
            .or_default()
            .extend(rd.read_states);
        node.advance();
    }

    pub fn process(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].has_ready() {
                let rd = self.node(id).ready();
                self.handle(id, rd);
            }
        }
    }

    /// Delivers messages until the cluster is quiet. Returns every message delivered.
    pub fn settle(&mut self) -> Vec<Message> {
        let mut delivered = Vec::new();
        for _ in 0..10_000 {
            self.process();
            let Some(m) = self.queue.pop_front() else {
                return delivered;
            };
            if self.blocked.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                continue;
            }
            delivered.push(m.clone());
            self.node(m.to).step(m);
        }
        panic!("cluster did not settle");
    }

    pub fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.settle();
        }
    }

    pub fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .map(|n| n.status())
            .filter(|s| s.soft_state.role == Role::Leader)
            .max_by_key(|s| s.hard_state.term)
            .map(|s| s.id)
    }

    pub fn elect(&mut self, id: NodeId) {
        self.node(id).campaign();
        self.settle();
        assert_eq!(self.leader(), Some(id));
    }

    /// Ticks until some node leads (used where fresh nodes must first wait out a lease).
    pub fn elect_by_timeout(&mut self) -> NodeId {
        for _ in 0..100 {
            self.tick(1);
            if let Some(id) = self.leader() {
                return id;
            }
        }
        panic!("no leader elected");
    }

    pub fn term(&self, id: NodeId) -> u64 {
        self.nodes[&id].status().hard_state.term
    }
}
