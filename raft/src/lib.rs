//! Raft consensus as a pure state machine (placeholder; see issue 4).
