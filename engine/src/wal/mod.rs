//! wal (placeholder).
