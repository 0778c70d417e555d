//! The backup process's `/metrics` (Prometheus text format), served by a plain thread: the
//! follower runs on one glommio executor and only updates the numbers.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Server revisions seen but not yet durable are remembered up to this many; past it the newest
/// is replaced, so the lag is still measured from the oldest.
const SEEN_MAX: usize = 4096;

#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Gauges>>);

#[derive(Default)]
struct Gauges {
    durable_revision: i64,
    server_revision: i64,
    bytes_written: u64,
    snapshots: u64,
    gaps: u64,
    /// Server revisions the watch reported, with when, newer than the durable revision.
    seen: VecDeque<(i64, Instant)>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Gauges)) {
        let mut gauges = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut gauges);
    }

    /// The watch said the server was at `revision` now.
    pub fn server_at(&self, revision: i64) {
        self.with(|g| {
            g.server_revision = g.server_revision.max(revision);
            if g.seen.back().is_none_or(|(newest, _)| *newest < revision) {
                if g.seen.len() == SEEN_MAX {
                    g.seen.pop_back();
                }
                g.seen.push_back((revision, Instant::now()));
            }
        });
    }

    pub fn durable(&self, revision: i64, bytes_written: u64) {
        self.with(|g| {
            g.durable_revision = revision;
            g.bytes_written = bytes_written;
            while g.seen.front().is_some_and(|(seen, _)| *seen <= revision) {
                g.seen.pop_front();
            }
        });
    }

    pub fn snapshot_taken(&self) {
        self.with(|g| g.snapshots += 1);
    }

    pub fn gap_recorded(&self) {
        self.with(|g| g.gaps += 1);
    }

    fn render(&self) -> String {
        let mut text = String::new();
        self.with(|g| {
            // How long ago the server was at a revision the backup does not yet hold durably.
            let lag_seconds = g.seen.front().map_or(0.0, |(_, at)| at.elapsed().as_secs_f64());
            let lines: [(&str, &str, &str, String); 7] = [
                ("basalt_backup_durable_revision", "gauge", "Newest revision made durable in the backup directory.", g.durable_revision.to_string()),
                ("basalt_backup_server_revision", "gauge", "Newest server revision the watch reported.", g.server_revision.to_string()),
                ("basalt_backup_lag_revisions", "gauge", "Server revision minus durable revision.", (g.server_revision - g.durable_revision).max(0).to_string()),
                ("basalt_backup_lag_seconds", "gauge", "Age of the oldest server revision seen and not yet durable (0 when caught up).", format!("{lag_seconds:.3}")),
                ("basalt_backup_bytes_written_total", "counter", "Segment bytes written by this process.", g.bytes_written.to_string()),
                ("basalt_backup_snapshots_total", "counter", "Snapshots taken by this process.", g.snapshots.to_string()),
                ("basalt_backup_gaps_total", "counter", "Gaps recorded by this process.", g.gaps.to_string()),
            ];
            for (name, kind, help, value) in lines {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
            }
        });
        text
    }
}

/// Serves `/metrics` (any path) on `addr` from a thread of its own.
pub fn serve(addr: SocketAddr, metrics: Metrics) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("metrics on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("basalt-backup-metrics".into())
        .spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let body = metrics.render();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \
                     {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
