//! Transport tests.
