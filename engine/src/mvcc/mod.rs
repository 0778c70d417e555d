//! mvcc (placeholder).
