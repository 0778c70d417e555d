//! etcd v3 messages (placeholder).
