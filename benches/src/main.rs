//! basalt-bench: the measuring tool behind every speed claim of Basalt.
//!
//! It owns two things: a load generator for any etcd v3 endpoint (subcommands named after
//! etcd's `benchmark` tool, with its own lean gRPC client so the client is never what is
//! measured) and the disk harness that says what an SSD allows a write-ahead log.
//! The load generator must never depend on Basalt's server internals: it measures Basalt and
//! etcd alike, through the wire protocol only. The disk harness alone uses `engine::wal`, to
//! draw the WAL's group-commit curve against the raw disk floor.

mod disk;
mod grpc;
mod k8s;
mod load;
mod report;
mod walcurve;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use report::{Goal, RunReport};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "basalt-bench",
    version,
    about = "Load generator for etcd v3 endpoints (Basalt or etcd) and an SSD harness",
    long_about = "Load generator for any etcd v3 endpoint, with subcommands named after etcd's \
                  benchmark tool, and `disk DIR`, the SSD harness. Every latency comes from an \
                  HdrHistogram (p50/p90/p99/p99.9/max); the tool reports its own CPU use so a \
                  reader can tell whether the client was the limit."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Comma-separated client endpoints (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// TCP connections; each carries many concurrent calls as HTTP/2 streams.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Concurrent closed-loop clients, spread over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Send every request to the leader (found with Maintenance/Status on each endpoint).
    #[arg(long, global = true)]
    target_leader: bool,
    /// Executor threads of the load generator (0: one per CPU this process may use).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// CA that signed the servers' certificates, for https:// endpoints (etcdctl's flag).
    #[arg(long, global = true, requires_all = ["cert", "tls_key"])]
    cacert: Option<PathBuf>,
    /// Client certificate presented to https:// endpoints.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Server process ids (comma-separated) whose CPU time and context switches (read from
    /// /proc over the run) and system calls (counted by `perf stat`, when perf is installed)
    /// are reported per request.
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Key of --cert. Its id is not `key`: global flags share one namespace with the
    /// subcommands' arguments, and `range KEY` already has that name.
    #[arg(long = "key", id = "tls_key", global = true)]
    tls_key: Option<PathBuf>,
}

/// How long a load run lasts and how fast it may go.
#[derive(Args, Debug)]
struct PaceArgs {
    /// Requests to send in total (ignored when --duration is given).
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Run for this many seconds instead of a fixed total.
    #[arg(long)]
    duration: Option<f64>,
    /// Requests per second over all clients; 0 means no limit.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

#[derive(Args, Debug)]
struct KeyArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Distinct keys written (keys are 0..size as Go varints, like etcd's benchmark).
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
}

#[derive(Args, Debug)]
struct ReadArgs {
    /// Read consistency: l (linearizable) or s (serializable).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    consistency: String,
    /// Maximum keys returned per range (0: no limit).
    #[arg(long, default_value_t = 0)]
    limit: i64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put keys: write throughput and latency.
    Put {
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        pace: PaceArgs,
        /// Write keys 0, 1, 2, ... in order instead of at random.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Range over KEY [END]: read throughput and latency.
    Range {
        /// The key (or start of the range) to read.
        key: String,
        /// End of the range, exclusive; omitted reads KEY alone.
        end: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Transactions that each put --txn-ops keys.
    TxnPut {
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        pace: PaceArgs,
        /// Puts per transaction.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Transactions that either range over KEY [END] or put a key, in a read/write ratio.
    TxnMixed {
        /// The key (or start of the range) the reads cover.
        key: String,
        /// End of the read range, exclusive.
        end: Option<String>,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        read: ReadArgs,
        #[command(flatten)]
        pace: PaceArgs,
        /// Reads per write (9 is 90% reads / 10% writes).
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
    },
    /// Watch fan-out: many watchers on one key, puts to it; creation latency, event latency
    /// and events delivered per second.
    Watch {
        #[command(flatten)]
        watch: WatchArgs,
        /// Watchers per gRPC watch stream.
        #[arg(long, default_value_t = 100)]
        watchers_per_stream: usize,
        /// Puts made once every watcher is created.
        #[arg(long, default_value_t = 100)]
        put_total: u64,
    },
    /// Watch latency: time from sending a put to each watcher receiving its event.
    WatchLatency {
        #[command(flatten)]
        watch: WatchArgs,
        /// Watchers per gRPC watch stream.
        #[arg(long, default_value_t = 10)]
        watchers_per_stream: usize,
        /// Puts made once every watcher is created.
        #[arg(long, default_value_t = 1000)]
        put_total: u64,
    },
    /// Lease keep-alives: each client grants a lease and renews it over a keep-alive stream.
    LeaseKeepalive {
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// The kube-apiserver's storage workload: objects under /registry/<resource>/<ns>/<name>
    /// created, updated (GuaranteedUpdate), deleted, read and listed in pages of 500 as the
    /// apiserver does, events on a shared lease, watchers on each resource's prefix and the
    /// apiserver's compaction; ops/s and latency per verb, and watch event lag.
    K8s {
        #[command(flatten)]
        pace: PaceArgs,
        /// Resources the objects are spread over (pods, configmaps, secrets, services,
        /// endpointslices, leases: 1 to 6).
        #[arg(long, default_value_t = 4)]
        resources: usize,
        #[arg(long, default_value_t = 20)]
        namespaces: u64,
        /// Objects created (not timed) before the run.
        #[arg(long, default_value_t = 10_000)]
        objects: u64,
        #[arg(long, default_value_t = 1024)]
        value_min_bytes: usize,
        #[arg(long, default_value_t = 10240)]
        value_max_bytes: usize,
        /// Watchers, one per resource prefix in turn, from the revision after the preload.
        #[arg(long, default_value_t = 12)]
        watchers: usize,
        /// Weights of the verbs (create, update, delete, get, list, events).
        #[arg(
            long,
            default_value = "create=8,update=50,delete=4,get=20,list=1,events=17"
        )]
        mix: String,
        /// Seconds between the apiserver's compaction rounds (it uses 300).
        #[arg(long, default_value_t = 300.0)]
        compact_interval: f64,
        /// Seconds between new event leases (the apiserver shares one per minute).
        #[arg(long, default_value_t = 60.0)]
        event_lease_interval: f64,
    },
    /// SSD harness on DIR: O_DIRECT write + fdatasync latency at 4K/16K/64K/1M, sequential
    /// bandwidth, etcd's fio-style check (2300-byte writes, fdatasync each, p99 < 10 ms), and
    /// the group-commit curve of Basalt's WAL (concurrent appenders vs records/s).
    Disk {
        /// Directory on the disk under test (two scratch files are made and removed there).
        dir: PathBuf,
        /// Size of the pre-written scratch file, MiB.
        #[arg(long, default_value_t = 256)]
        file_mib: usize,
        /// Samples per block size, at most.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Seconds per block size, at most.
        #[arg(long, default_value_t = 10.0)]
        seconds_per_size: f64,
        /// Bytes written by the fio-style check, MiB (etcd's guide uses 22).
        #[arg(long, default_value_t = 22)]
        fio_mib: usize,
        /// Seconds per point of the WAL group-commit curve (0 leaves the curve out).
        #[arg(long, default_value_t = 2.0)]
        wal_seconds_per_point: f64,
    },
}

#[derive(Args, Debug)]
struct WatchArgs {
    /// The watched key.
    #[arg(long, default_value = "basalt-bench-watch")]
    key: String,
    /// gRPC watch streams, spread over the connections.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Puts per second to the watched key.
    #[arg(long, default_value_t = 100.0)]
    put_rate: f64,
    /// Value size in bytes (at least 8: the value carries the put's send time).
    #[arg(long, default_value_t = 8)]
    val_size: usize,
}

impl PaceArgs {
    fn pace(&self) -> load::Pace {
        load::Pace {
            goal: match self.duration {
                Some(s) => Goal::Duration(Duration::from_secs_f64(s)),
                None => Goal::Count(self.total),
            },
            rate_per_s: (self.rate > 0.0).then_some(self.rate),
        }
    }
}

fn value_of(size_bytes: usize) -> Bytes {
    // Incompressible enough for a benchmark, cheap to make, and the same in every run.
    Bytes::from(
        (0..size_bytes)
            .map(|i| (i * 131 + 7) as u8)
            .collect::<Vec<_>>(),
    )
}

fn allowed_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run(cli: Cli) -> Result<Option<RunReport>, String> {
    let g = &cli.global;
    if let (Some(ca), Some(cert), Some(key)) = (&g.cacert, &g.cert, &g.tls_key) {
        grpc::use_tls(ca, cert, key)?;
    }
    let common = load::Common {
        endpoints: g.endpoints.clone(),
        conns: g.conns,
        clients: g.clients,
        target_leader: g.target_leader,
        threads: if g.threads == 0 {
            allowed_cpus()
        } else {
            g.threads
        },
        server_pids: g.server_pid.clone(),
    };
    let mut params = json!({
        "endpoints": g.endpoints, "conns": g.conns, "clients": g.clients,
        "target_leader": g.target_leader, "threads": common.threads,
        "argv": std::env::args().collect::<Vec<_>>(),
    });
    let text = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let mut set = |name: &str| {
        params["workload"] = json!(name);
        params.clone()
    };
    let result = match &cli.command {
        Command::Put {
            keys,
            pace,
            sequential_keys,
        } => {
            let params = set("put");
            let workload = load::Workload::Put {
                key_bytes: keys.key_size,
                value: value_of(keys.val_size),
                sequential_keys: *sequential_keys,
                key_space: keys.key_space_size,
            };
            load::run(&common, pace.pace(), workload, params)
        }
        Command::Range {
            key,
            end,
            read,
            pace,
        } => {
            let params = set("range");
            let workload = load::Workload::Range {
                key: text(key),
                range_end: text(end.as_deref().unwrap_or("")),
                serializable: read.consistency == "s",
                limit: read.limit,
            };
            load::run(&common, pace.pace(), workload, params)
        }
        Command::TxnPut {
            keys,
            pace,
            txn_ops,
        } => {
            let params = set("txn-put");
            let workload = load::Workload::TxnPut {
                key_bytes: keys.key_size,
                value: value_of(keys.val_size),
                key_space: keys.key_space_size,
                ops_per_txn: (*txn_ops).max(1),
            };
            load::run(&common, pace.pace(), workload, params)
        }
        Command::TxnMixed {
            key,
            end,
            keys,
            read,
            pace,
            rw_ratio,
        } => {
            let params = set("txn-mixed");
            let workload = load::Workload::TxnMixed {
                key: text(key),
                range_end: text(end.as_deref().unwrap_or("")),
                serializable: read.consistency == "s",
                limit: read.limit,
                key_bytes: keys.key_size,
                value: value_of(keys.val_size),
                key_space: keys.key_space_size,
                read_fraction: rw_ratio / (rw_ratio + 1.0),
            };
            load::run(&common, pace.pace(), workload, params)
        }
        Command::Watch {
            watch,
            watchers_per_stream,
            put_total,
        }
        | Command::WatchLatency {
            watch,
            watchers_per_stream,
            put_total,
        } => {
            let name = if matches!(cli.command, Command::Watch { .. }) {
                "watch"
            } else {
                "watch-latency"
            };
            let params = set(name);
            let options = load::WatchOptions {
                key: text(&watch.key),
                streams: watch.streams,
                watchers_per_stream: *watchers_per_stream,
                put_total: *put_total,
                put_rate_per_s: watch.put_rate,
                value_bytes: watch.val_size,
            };
            load::run_watch(&common, options, params)
        }
        Command::K8s {
            pace,
            resources,
            namespaces,
            objects,
            value_min_bytes,
            value_max_bytes,
            watchers,
            mix,
            compact_interval,
            event_lease_interval,
        } => {
            let options = k8s::Options {
                resources: *resources,
                namespaces: *namespaces,
                objects: *objects,
                value_min_bytes: *value_min_bytes,
                value_max_bytes: *value_max_bytes,
                watchers: *watchers,
                mix: k8s::Mix::parse(mix)?,
                compact_interval: Duration::from_secs_f64(compact_interval.max(0.1)),
                event_lease_interval: Duration::from_secs_f64(event_lease_interval.max(0.1)),
            };
            k8s::run(&common, pace.pace(), options)
        }
        Command::LeaseKeepalive { pace } => {
            let params = set("lease-keepalive");
            load::run(&common, pace.pace(), load::Workload::LeaseKeepalive, params)
        }
        Command::Disk {
            dir,
            file_mib,
            samples,
            seconds_per_size,
            fio_mib,
            wal_seconds_per_point,
        } => {
            let options = disk::DiskOptions {
                dir: dir.clone(),
                file_mib: *file_mib,
                samples_max: *samples,
                seconds_per_size: *seconds_per_size,
                fio_mib: *fio_mib,
            };
            let mut result = disk::run(&options).map_err(|e| e.to_string())?;
            if *wal_seconds_per_point > 0.0 {
                // The WAL wants an absolute directory (it reopens it by path to sync it).
                let dir =
                    std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                // A failing WAL is a finding of the run, not a reason to lose the floor.
                result["wal_group_commit"] = walcurve::run(&dir, *wal_seconds_per_point)
                    .unwrap_or_else(|message| json!({ "error": message }));
            }
            disk::print_table(&result, &mut std::io::stdout()).map_err(|e| e.to_string())?;
            if let Some(path) = &g.json {
                report::write_json(path, &result)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            return Ok(None);
        }
    };
    result.map(Some).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_path = cli.global.json.clone();
    match run(cli) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(report)) => {
            let _ = report.print_table(&mut std::io::stdout());
            if let Some(path) = json_path {
                if let Err(e) = report::write_json(&path, &report.to_json()) {
                    eprintln!("basalt-bench: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            // Scripts (perf/compare.sh waiting for a server) need to tell "nothing worked"
            // from a run with the odd error, which the table already shows.
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                eprintln!("basalt-bench: no request succeeded");
                ExitCode::FAILURE
            }
        }
        Err(message) => {
            eprintln!("basalt-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
