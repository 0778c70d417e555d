//! The simulated network: every message waits a random delay, and may be dropped, duplicated
//! or blocked by a partition. Deterministic given the world's PRNG.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use crate::message::{Message, NodeId};
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct NetworkFaults {
    pub drop_ppm: u32,
    pub duplicate_ppm: u32,
    pub delay_min: u64,
    pub delay_max: u64,
}

struct InFlight {
    deliver_at: u64,
    seq: u64,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.seq) == (other.deliver_at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deliver_at, self.seq).cmp(&(other.deliver_at, other.seq))
    }
}

/// What became of a message handed to the network.
pub enum Fate {
    Queued,
    Dropped(Box<Message>),
}

pub struct Network {
    queue: BinaryHeap<Reverse<InFlight>>,
    next_seq: u64,
    /// Directed links that deliver nothing.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub faults: NetworkFaults,
    pub sent: u64,
    pub dropped: u64,
}

impl Network {
    pub fn new(faults: NetworkFaults) -> Network {
        Network {
            queue: BinaryHeap::new(),
            next_seq: 0,
            blocked: BTreeSet::new(),
            faults,
            sent: 0,
            dropped: 0,
        }
    }

    pub fn send(&mut self, message: Message, now: u64, rng: &mut Rng) -> Fate {
        self.sent += 1;
        if self.blocked.contains(&(message.from, message.to)) || rng.chance(self.faults.drop_ppm) {
            self.dropped += 1;
            return Fate::Dropped(Box::new(message));
        }
        let copies = if rng.chance(self.faults.duplicate_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let deliver_at = now + rng.range(self.faults.delay_min, self.faults.delay_max + 1);
            self.next_seq += 1;
            self.queue.push(Reverse(InFlight {
                deliver_at,
                seq: self.next_seq,
                message: message.clone(),
            }));
        }
        Fate::Queued
    }

    /// The next message due at or before `now`, with whether its link is blocked right now.
    pub fn pop_due(&mut self, now: u64) -> Option<(Message, bool)> {
        if self
            .queue
            .peek()
            .is_none_or(|Reverse(m)| m.deliver_at > now)
        {
            return None;
        }
        let Reverse(InFlight { message, .. }) = self.queue.pop().expect("peeked");
        let blocked = self.blocked.contains(&(message.from, message.to));
        if blocked {
            self.dropped += 1;
        }
        Some((message, blocked))
    }

    pub fn isolate(&mut self, id: NodeId, all: &[NodeId]) {
        for &other in all {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    /// Splits `all` into `side` and the rest, in both directions.
    pub fn split(&mut self, side: &[NodeId], all: &[NodeId]) {
        for &a in side {
            for &b in all.iter().filter(|b| !side.contains(b)) {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }
}
