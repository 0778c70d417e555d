//! btree (placeholder).
