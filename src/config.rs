//! Command-line flags and `ETCD_*` environment variables, named exactly as etcd 3.5 names them,
//! so that a deployment script written for etcd starts Basalt unchanged.
//!
//! Go's flag package (which etcd uses) accepts `-flag`, `--flag`, `--flag=value` and
//! `--flag value`; [`normalize_go_flags`] rewrites the single-dash spelling so clap sees one form.

use basalt_net::tls::TlsVersion;
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// etcd's default for `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1024 * 1024 + 512 * 1024;
/// etcd's default for `--max-txn-ops`.
pub const MAX_TXN_OPS_DEFAULT: usize = 128;

#[derive(Debug, Parser)]
#[command(
    name = "basalt",
    about = "Basalt: an etcd v3 compatible key-value server",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub server: ServerFlags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the records of a member's write-ahead log (what etcd-dump-log does).
    DumpLog(DumpLogFlags),
    /// Verify a stopped member's B+tree file: every page checksum and the tree structure.
    Check(CheckFlags),
    /// Offline work on snapshot files (what `etcdutl snapshot` does).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Build a new data directory from a stopped etcd 3.4/3.5 member's data dir: its db and
    /// the WAL entries committed after the db's consistent index.
    Migrate(MigrateFlags),
    /// Continuous backup: a snapshot, then every change after it streamed into a directory
    /// (`basalt backup status D` describes such a directory).
    Backup(BackupCommand),
    /// Build a new data directory from a backup directory at a chosen revision or time.
    Restore(PitrFlags),
    /// Rotate the encryption key: append a new random key to the key file and make it the
    /// current one. A running server re-reads the file within a second and seals new WAL
    /// segments and tree pages with it; `etcdctl defrag` then rewrites the older ones.
    Rekey(RekeyFlags),
}

/// `rekey`: the key file to rotate, and optionally the data dir it must open.
#[derive(Debug, Args)]
pub struct RekeyFlags {
    /// The key file (the server's --encryption-key-file), replaced atomically, mode 0600.
    #[arg(long = "encryption-key-file")]
    pub encryption_key_file: PathBuf,
    /// Refuse to rotate unless this data dir's WAL opens with the key file as it is now.
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
}

/// `backup`: follow a cluster into a directory, or (`backup status D`) describe one.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupCommand {
    #[command(subcommand)]
    pub status: Option<BackupStatusCommand>,
    #[command(flatten)]
    pub flags: BackupFlags,
}

#[derive(Debug, Subcommand)]
pub enum BackupStatusCommand {
    /// List a backup directory's snapshots, covered revisions and times, gaps and damage.
    Status {
        /// The backup directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct BackupFlags {
    /// The cluster's client endpoints (host:port or http://host:port), tried in turn.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// The backup directory (created if missing; a directory of an earlier run is resumed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How often a new snapshot is taken (Go duration, or days as 7d).
    #[arg(long = "snapshot-interval", default_value = "30m", value_parser = parse_long_duration)]
    pub snapshot_interval: Duration,
    /// How often received events are written and made durable (fdatasync).
    #[arg(long = "flush-interval", default_value = "1s", value_parser = parse_long_duration)]
    pub flush_interval: Duration,
    /// How often the server's leases are listed, to record each new lease's granted TTL for
    /// restore (events do not carry it).
    #[arg(long = "lease-list-interval", default_value = "10s", value_parser = parse_long_duration)]
    pub lease_list_interval: Duration,
    /// How far back restore must reach: older snapshots and segments are removed.
    #[arg(long, default_value = "7d", value_parser = parse_long_duration)]
    pub retention: Duration,
    /// etcdctl's --user: name:password (or a name alone, the password then from --password)
    /// to log in as when the cluster has auth enabled (Snapshot needs the root role).
    #[arg(long)]
    pub user: Option<String>,
    /// The password of --user when it gives only the name.
    #[arg(long)]
    pub password: Option<String>,
    /// etcdctl's --cacert: verify the server's certificate with this CA bundle (the system's
    /// CAs without it). Any TLS flag makes endpoints without a scheme dial with TLS.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// etcdctl's --cert: present this client certificate (with --key).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// etcdctl's --key: the key of --cert.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// etcdctl's --insecure-skip-tls-verify: accept any server certificate.
    #[arg(long = "insecure-skip-tls-verify")]
    pub insecure_skip_tls_verify: bool,
    /// Serve the backup's Prometheus metrics (lag, bytes written) at /metrics on this
    /// address (host:port or http://host:port).
    #[arg(long = "listen-metrics-url")]
    pub listen_metrics_url: Option<String>,
}

/// `restore`: the backup, the point to restore to, and the new member as `snapshot restore`
/// takes it.
#[derive(Debug, Args)]
pub struct PitrFlags {
    /// The backup directory `basalt backup --dir` wrote.
    #[arg(long = "backup-dir")]
    pub backup_dir: PathBuf,
    /// Restore exactly this revision.
    #[arg(
        long = "to-revision",
        conflicts_with = "to_time",
        required_unless_present = "to_time"
    )]
    pub to_revision: Option<i64>,
    /// Restore the newest revision the backup received at or before this time (RFC 3339, e.g.
    /// 2024-05-01T12:00:00Z, or seconds since the Unix epoch).
    #[arg(long = "to-time")]
    pub to_time: Option<String>,
    /// TTL in seconds given to a lease that replayed keys name but the snapshot lacks.
    #[arg(long = "lease-ttl", default_value = "60")]
    pub lease_ttl: i64,
    #[command(flatten)]
    pub member: NewMemberFlags,
}

/// A Go duration, or a whole number of days (`7d`), which Go's syntax lacks.
pub fn parse_long_duration(text: &str) -> Result<Duration, String> {
    match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => Ok(Duration::from_secs(days * 86_400)),
        _ => parse_go_duration(text),
    }
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Build a new data directory from a snapshot file (`etcdctl snapshot save` output).
    Restore {
        /// The snapshot file.
        file: PathBuf,
        #[command(flatten)]
        flags: RestoreFlags,
    },
    /// Check a snapshot file (or a stopped member's member/snap/db) and print its hash,
    /// revision, key count and size.
    Status {
        /// The snapshot file.
        file: PathBuf,
        /// Output format: simple, table or json.
        #[arg(long = "write-out", short = 'w', default_value = "simple", value_parser = ["simple", "table", "json"])]
        write_out: String,
        /// The key file an encrypted member's tree file is sealed with (`--encryption-key-file`
        /// of its server); snapshots themselves are plaintext.
        #[arg(long = "encryption-key-file")]
        encryption_key_file: Option<PathBuf>,
    },
}

/// `snapshot restore`: etcdutl's flags.
#[derive(Debug, Args)]
pub struct RestoreFlags {
    #[command(flatten)]
    pub member: NewMemberFlags,
    /// Read an etcd file whose sha256 trailer is missing (e.g. a member's member/snap/db).
    #[arg(long = "skip-hash-check", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub skip_hash_check: bool,
}

/// `migrate`: the etcd member's data dir, and the new member as `snapshot restore` takes it.
#[derive(Debug, Args)]
pub struct MigrateFlags {
    /// The stopped etcd member's --data-dir (it holds member/snap/db and member/wal).
    #[arg(long = "from-etcd-data-dir")]
    pub from_etcd_data_dir: PathBuf,
    #[command(flatten)]
    pub member: NewMemberFlags,
}

/// The data dir a restore or migration creates and the member it holds, with etcdutl's flags:
/// they name that member and the new cluster's members, as etcd's restore records them; the
/// member then restarts from the dir whatever its bootstrap flags say.
#[derive(Debug, Args)]
pub struct NewMemberFlags {
    /// The data directory to create (default: "${name}.basalt").
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// This member's name.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The new cluster's members: name=peer-url,...
    #[arg(long = "initial-cluster")]
    pub initial_cluster: Option<String>,
    /// The new cluster's token.
    #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(
        long = "initial-advertise-peer-urls",
        value_delimiter = ',',
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Encrypt the new data dir with this key file (what its server will be started with:
    /// 32 raw bytes or `id:key` lines, mode 0600); plaintext without it.
    #[arg(long = "encryption-key-file")]
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckFlags {
    /// The member's data directory (the B+tree is <data-dir>/member/snap/db).
    #[arg(long = "data-dir")]
    pub data_dir: PathBuf,
    /// The key file the data dir is encrypted with (`--encryption-key-file` of the server);
    /// an encrypted data dir is refused without it.
    #[arg(long = "encryption-key-file")]
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DumpLogFlags {
    /// The member's data directory (the WAL is read from <data-dir>/member/wal).
    #[arg(long = "data-dir")]
    pub data_dir: PathBuf,
    /// First raft index to print.
    #[arg(long = "start-index", default_value_t = 0)]
    pub start_index: u64,
    /// Last raft index to print (inclusive); all when absent.
    #[arg(long = "end-index")]
    pub end_index: Option<u64>,
    /// Only print records of this type.
    #[arg(long = "entry-type")]
    pub entry_type: Option<String>,
    /// The key file the data dir is encrypted with (`--encryption-key-file` of the server);
    /// an encrypted data dir is refused without it.
    #[arg(long = "encryption-key-file")]
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServerFlags {
    /// Print the version and exit.
    #[arg(long = "version", action = ArgAction::SetTrue)]
    pub version: bool,

    // ---- member ----
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: "${name}.basalt").
    #[arg(long = "data-dir", env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to a dedicated WAL directory (default: inside the data directory).
    #[arg(long = "wal-dir", env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Committed entries that trigger a snapshot to disk.
    #[arg(
        long = "snapshot-count",
        env = "ETCD_SNAPSHOT_COUNT",
        default_value_t = 100_000
    )]
    pub snapshot_count: u64,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(
        long = "heartbeat-interval",
        env = "ETCD_HEARTBEAT_INTERVAL",
        default_value_t = 100
    )]
    pub heartbeat_interval_ms: u64,
    /// Time (in milliseconds) for an election to time out.
    #[arg(
        long = "election-timeout",
        env = "ETCD_ELECTION_TIMEOUT",
        default_value_t = 1000
    )]
    pub election_timeout_ms: u64,
    /// List of URLs to listen on for peer traffic.
    #[arg(
        long = "listen-peer-urls",
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,
    /// List of URLs to listen on for client traffic.
    #[arg(
        long = "listen-client-urls",
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,
    /// List of URLs to listen on for the metrics and health endpoints.
    #[arg(
        long = "listen-metrics-urls",
        env = "ETCD_LISTEN_METRICS_URLS",
        value_delimiter = ','
    )]
    pub listen_metrics_urls: Vec<String>,
    /// Maximum number of snapshot files to retain (0 is unlimited).
    #[arg(
        long = "max-snapshots",
        env = "ETCD_MAX_SNAPSHOTS",
        default_value_t = 5
    )]
    pub max_snapshots: u32,
    /// Maximum number of WAL files to retain (0 is unlimited).
    #[arg(long = "max-wals", env = "ETCD_MAX_WALS", default_value_t = 5)]
    pub max_wals: u32,
    /// Raise an alarm when the backend size exceeds this many bytes (0 means the default, 2 GiB).
    #[arg(
        long = "quota-backend-bytes",
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0
    )]
    pub quota_backend_bytes: i64,
    /// Free space the data dir's filesystem must keep: below it, writes that take space are
    /// refused with NOSPACE (reads, watches, keep-alives go on) until space is freed and the
    /// alarm disarmed. 0 turns the check off.
    #[arg(long = "disk-reserve-bytes", env = "BASALT_DISK_RESERVE_BYTES", default_value_t = basalt_net::node::DISK_RESERVE_BYTES_DEFAULT)]
    pub disk_reserve_bytes: u64,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long = "max-txn-ops", env = "ETCD_MAX_TXN_OPS", default_value_t = MAX_TXN_OPS_DEFAULT)]
    pub max_txn_ops: usize,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long = "max-request-bytes", env = "ETCD_MAX_REQUEST_BYTES", default_value_t = MAX_REQUEST_BYTES_DEFAULT)]
    pub max_request_bytes: usize,
    /// Maximum concurrent streams that each client connection may open.
    #[arg(long = "max-concurrent-streams", env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Minimum interval a client should wait before pinging the server (Go duration, e.g. 5s).
    #[arg(long = "grpc-keepalive-min-time", env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s", value_parser = parse_go_duration)]
    pub grpc_keepalive_min_time: Duration,
    /// Frequency of server-to-client pings to check that a connection is alive (0 disables).
    #[arg(long = "grpc-keepalive-interval", env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = parse_go_duration)]
    pub grpc_keepalive_interval: Duration,
    /// How long to wait for a ping answer before closing the connection.
    #[arg(long = "grpc-keepalive-timeout", env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_go_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Accepted for compatibility: Basalt always listens with SO_REUSEPORT (one listener per core).
    #[arg(long = "socket-reuse-port", env = "ETCD_SOCKET_REUSE_PORT", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub socket_reuse_port: bool,
    /// Accepted for compatibility (SO_REUSEADDR is always set).
    #[arg(long = "socket-reuse-address", env = "ETCD_SOCKET_REUSE_ADDRESS", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub socket_reuse_address: bool,

    // ---- clustering ----
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long = "initial-advertise-peer-urls",
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping (name=peer-url,...).
    #[arg(long = "initial-cluster", env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: new or existing.
    #[arg(long = "initial-cluster-state", env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(
        long = "initial-cluster-token",
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(
        long = "advertise-client-urls",
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long = "strict-reconfig-check", env = "ETCD_STRICT_RECONFIG_CHECK", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true")]
    pub strict_reconfig_check: bool,
    /// Enable the raft pre-vote phase.
    #[arg(long = "pre-vote", env = "ETCD_PRE_VOTE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true")]
    pub pre_vote: bool,
    /// Auto compaction retention (hours for periodic mode unless a unit is given; revisions otherwise).
    #[arg(
        long = "auto-compaction-retention",
        env = "ETCD_AUTO_COMPACTION_RETENTION",
        default_value = "0"
    )]
    pub auto_compaction_retention: String,
    /// Interpret the retention as a period ("periodic") or a revision count ("revision").
    #[arg(long = "auto-compaction-mode", env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,
    /// Force a new single-member cluster from this member's existing data.
    #[arg(long = "force-new-cluster", env = "ETCD_FORCE_NEW_CLUSTER", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub force_new_cluster: bool,

    // ---- security ----
    /// Path to the client server TLS certificate file.
    #[arg(long = "cert-file", env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long = "key-file", env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Enable client certificate authentication.
    #[arg(long = "client-cert-auth", env = "ETCD_CLIENT_CERT_AUTH", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub client_cert_auth: bool,
    /// Path to the client server TLS trusted CA file.
    #[arg(long = "trusted-ca-file", env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client TLS using generated certificates.
    #[arg(long = "auto-tls", env = "ETCD_AUTO_TLS", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub auto_tls: bool,
    /// Path to the peer server TLS certificate file.
    #[arg(long = "peer-cert-file", env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long = "peer-key-file", env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Enable peer client certificate authentication.
    #[arg(long = "peer-client-cert-auth", env = "ETCD_PEER_CLIENT_CERT_AUTH", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub peer_client_cert_auth: bool,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long = "peer-trusted-ca-file", env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided.
    #[arg(long = "peer-auto-tls", env = "ETCD_PEER_AUTO_TLS", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub peer_auto_tls: bool,
    /// Validity in years of the certificates --auto-tls and --peer-auto-tls generate.
    #[arg(
        long = "self-signed-cert-validity",
        env = "ETCD_SELF_SIGNED_CERT_VALIDITY",
        default_value_t = 1
    )]
    pub self_signed_cert_validity_years: u32,
    /// Comma-separated TLS 1.2 cipher suites (Go's names) for client and peer connections; empty means rustls' defaults. TLS 1.3 suites are always on.
    #[arg(
        long = "cipher-suites",
        env = "ETCD_CIPHER_SUITES",
        value_delimiter = ','
    )]
    pub cipher_suites: Vec<String>,
    /// Minimum TLS version for client and peer connections: TLS1.2 or TLS1.3 (etcd 3.6's flag).
    #[arg(long = "tls-min-version", env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2", value_parser = parse_tls_version)]
    pub tls_min_version: TlsVersion,
    /// Maximum TLS version for client and peer connections: TLS1.2 or TLS1.3 (etcd 3.6's flag).
    #[arg(long = "tls-max-version", env = "ETCD_TLS_MAX_VERSION", default_value = "TLS1.3", value_parser = parse_tls_version)]
    pub tls_max_version: TlsVersion,
    /// Auth token type and options: simple or jwt,...
    #[arg(long = "auth-token", env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Time (in seconds) of the auth-token-ttl.
    #[arg(
        long = "auth-token-ttl",
        env = "ETCD_AUTH_TOKEN_TTL",
        default_value_t = 300
    )]
    pub auth_token_ttl: u64,
    /// bcrypt cost for hashing auth passwords.
    #[arg(long = "bcrypt-cost", env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,

    // ---- logging and monitoring ----
    /// Logger (only "zap" exists in etcd 3.5; accepted for compatibility).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,
    /// Log level: debug, info, warn, error, panic or fatal.
    #[arg(long = "log-level", env = "ETCD_LOG_LEVEL", default_value = "info", value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,
    /// Where to write logs: stderr, stdout or a file path.
    #[arg(
        long = "log-outputs",
        env = "ETCD_LOG_OUTPUTS",
        default_value = "default",
        value_delimiter = ','
    )]
    pub log_outputs: Vec<String>,
    /// Metrics detail: basic or extensive.
    #[arg(long, env = "ETCD_METRICS", default_value = "basic", value_parser = ["basic", "extensive"])]
    pub metrics: String,
    /// Enable runtime profiling data over HTTP (accepted; Basalt has no Go profiler to expose).
    #[arg(long = "enable-pprof", env = "ETCD_ENABLE_PPROF", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub enable_pprof: bool,

    // ---- experimental (etcd's names) ----
    /// Interval of watch progress notifications.
    #[arg(long = "experimental-watch-progress-notify-interval", env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_go_duration)]
    pub watch_progress_notify_interval: Duration,
    /// Check database corruption on start.
    #[arg(long = "experimental-initial-corrupt-check", env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub initial_corrupt_check: bool,
    /// Interval between corruption checks across members (0 disables).
    #[arg(long = "experimental-corrupt-check-time", env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", default_value = "0s", value_parser = parse_go_duration)]
    pub corrupt_check_time: Duration,
    /// The layout of the files the Snapshot RPC streams: "etcd" (bbolt, what etcdutl and etcd
    /// read) or "basalt" (a copy of Basalt's own tree: faster, read only by Basalt).
    #[arg(long = "snapshot-format", env = "BASALT_SNAPSHOT_FORMAT", default_value = "etcd", value_parser = ["etcd", "basalt"])]
    pub snapshot_format: String,

    // ---- Basalt's own ----
    /// Number of cores (glommio executors) serving clients; 0 means every core.
    #[arg(long, env = "BASALT_CORES", default_value_t = 0)]
    pub cores: usize,
    /// Push-off: a member without a leader, or whose writes stop committing, tells its
    /// clients to go away (HTTP/2 GOAWAY) and refuses calls at once with "etcdserver: no
    /// leader", so clients with several endpoints move to a member that works.
    #[arg(long = "push-off", env = "BASALT_PUSH_OFF", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true")]
    pub push_off: bool,
    /// Election timeouts without a leader before a member pushes its clients off.
    #[arg(long = "push-off-election-timeouts", env = "BASALT_PUSH_OFF_ELECTION_TIMEOUTS", default_value_t = basalt_net::NO_LEADER_CHECKS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    pub push_off_election_timeouts: u32,
    /// Busy-poll: after its last piece of work a client core keeps polling its sockets and
    /// disk completions for this long before it sleeps, so a request arriving meanwhile is
    /// not delayed by the wake-up of a sleeping thread. Bounded: an idle server sleeps after
    /// it. 0 turns it off (see README for the measured trade-off).
    #[arg(long = "busy-poll", env = "BASALT_BUSY_POLL", default_value = "0s", value_parser = parse_go_duration)]
    pub busy_poll: Duration,
    /// Encryption at rest: a key file of 32 raw bytes, or `id:key` lines (decimal id, 64 hex
    /// digits; the last line seals new data, older ids still open what they sealed), readable
    /// by its owner only (mode 0600). WAL records and tree pages are sealed with AES-256-GCM.
    /// The file is re-read when it changes, so a key appended by `basalt rekey` takes effect
    /// without a restart. Without it nothing is encrypted.
    #[arg(long = "encryption-key-file", env = "BASALT_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
}

impl ServerFlags {
    /// The data directory, defaulting like etcd's `${name}.etcd` but with Basalt's own suffix so
    /// an etcd data directory is never mistaken for ours.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.basalt", self.name)))
    }
}

/// `--initial-cluster` as (name, peer URLs) in the order first named; a name given several
/// times collects its URLs, as etcd reads it. Without the flag the cluster is this member
/// alone at its advertised peer URLs.
pub fn initial_cluster(flags: &ServerFlags) -> Result<Vec<(String, Vec<String>)>, String> {
    parse_initial_cluster(
        flags.initial_cluster.as_deref(),
        &flags.name,
        &flags.initial_advertise_peer_urls,
    )
}

/// [`initial_cluster`] from the flags' values (shared with `snapshot restore`).
pub fn parse_initial_cluster(
    initial_cluster: Option<&str>,
    name: &str,
    advertise_peer_urls: &[String],
) -> Result<Vec<(String, Vec<String>)>, String> {
    let Some(text) = initial_cluster.filter(|t| !t.is_empty()) else {
        return Ok(vec![(name.to_owned(), advertise_peer_urls.to_vec())]);
    };
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for pair in text.split(',') {
        let Some((name, url)) = pair.split_once('=') else {
            return Err(format!(
                "--initial-cluster {text:?}: {pair:?} is not name=peer-url"
            ));
        };
        match members.iter_mut().find(|(known, _)| known == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    let Some((_, own_urls)) = members.iter().find(|(known, _)| known == name) else {
        return Err(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        ));
    };
    let mut own_sorted = own_urls.clone();
    own_sorted.sort();
    let mut advertised = advertise_peer_urls.to_vec();
    advertised.sort();
    if own_sorted != advertised {
        return Err(format!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={}",
            own_urls.join(","),
            advertise_peer_urls.join(",")
        ));
    }
    Ok(members)
}

/// A member's id: stable for the same advertised peer URLs and cluster token, as etcd derives it
/// (etcd hashes the same inputs with SHA-1; the exact value differs, the stability does not).
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    nonzero_hash(sorted.join("").bytes().chain(cluster_token.bytes()))
}

/// A cluster's id, derived from its members' ids and the cluster token.
pub fn cluster_id(member_ids: &[u64], cluster_token: &str) -> u64 {
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let id_bytes = sorted.into_iter().flat_map(u64::to_be_bytes);
    nonzero_hash(id_bytes.chain(cluster_token.bytes()))
}

/// 64-bit FNV-1a; ids of zero mean "none" in etcd's protocol, so zero is never returned.
fn nonzero_hash(bytes: impl Iterator<Item = u8>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes.fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    hash.max(1)
}

/// Rewrites Go's single-dash long flags (`-name x`, `-data-dir=y`) into `--name x`, leaving short
/// flags (`-h`), values, a lone `-` and everything after `--` untouched.
pub fn normalize_go_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen_separator = false;
    args.into_iter()
        .enumerate()
        .map(|(position, arg)| {
            if position == 0 || seen_separator {
                return arg;
            }
            if arg == "--" {
                seen_separator = true;
                return arg;
            }
            let is_single_dash_long = arg.starts_with('-')
                && !arg.starts_with("--")
                && arg.len() > 2
                && arg.as_bytes()[1].is_ascii_alphabetic();
            if is_single_dash_long {
                format!("-{arg}")
            } else {
                arg
            }
        })
        .collect()
}

fn parse_tls_version(name: &str) -> Result<TlsVersion, String> {
    TlsVersion::parse(name).map_err(|e| e.to_string())
}

/// Parses a Go `time.Duration` string such as `5s`, `100ms`, `1h30m` or `0`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || format!("time: invalid duration \"{text}\"");
    let mut rest = text;
    let mut total_ns: f64 = 0.0;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration \"{text}\""))?;
        if number_len == 0 {
            return Err(invalid());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            unit => {
                return Err(format!(
                    "time: unknown unit \"{unit}\" in duration \"{text}\""
                ))
            }
        };
        total_ns += number * unit_ns;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_nanos(total_ns as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let args = normalize_go_flags(args.iter().map(|s| s.to_string()));
        Cli::try_parse_from(args)
    }

    #[test]
    fn defaults_match_etcd() {
        let cli = parse(&["basalt"]).unwrap();
        let flags = cli.server;
        assert_eq!(flags.name, "default");
        assert_eq!(flags.data_dir(), PathBuf::from("default.basalt"));
        assert_eq!(flags.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(flags.max_txn_ops, 128);
        assert_eq!(flags.max_request_bytes, 1_572_864);
        assert_eq!(flags.snapshot_count, 100_000);
        assert_eq!(flags.max_wals, 5);
    }

    #[test]
    fn go_style_spellings_are_accepted() {
        let cases: &[&[&str]] = &[
            &["basalt", "--name", "n1"],
            &["basalt", "--name=n1"],
            &["basalt", "-name", "n1"],
            &["basalt", "-name=n1"],
        ];
        for args in cases {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.server.name, "n1", "{args:?}");
        }
    }

    #[test]
    fn go_booleans_take_an_optional_value() {
        assert!(
            parse(&["basalt", "--force-new-cluster"])
                .unwrap()
                .server
                .force_new_cluster
        );
        assert!(
            !parse(&["basalt", "--pre-vote=false"])
                .unwrap()
                .server
                .pre_vote
        );
        assert!(parse(&["basalt", "--pre-vote=maybe"]).is_err());
    }

    #[test]
    fn url_lists_split_on_commas() {
        let cli = parse(&[
            "basalt",
            "--listen-client-urls",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(cli.server.listen_client_urls.len(), 2);
    }

    #[test]
    fn unknown_and_malformed_flags_are_rejected() {
        assert!(parse(&["basalt", "--no-such-flag"]).is_err());
        assert!(parse(&["basalt", "--max-txn-ops", "many"]).is_err());
        assert!(parse(&["basalt", "--initial-cluster-state", "old"]).is_err());
        assert!(parse(&["basalt", "--grpc-keepalive-min-time", "5 parsecs"]).is_err());
    }

    #[test]
    fn ids_are_stable_and_depend_on_their_inputs() {
        let urls = vec!["http://10.0.0.1:2380".to_string()];
        assert_eq!(member_id(&urls, "t"), member_id(&urls, "t"));
        assert_ne!(member_id(&urls, "t"), member_id(&urls, "other-token"));
        assert_ne!(cluster_id(&[1, 2], "t"), cluster_id(&[1, 3], "t"));
        assert_eq!(cluster_id(&[1, 2], "t"), cluster_id(&[2, 1], "t"));
    }

    #[test]
    fn initial_cluster_names_this_member_at_its_advertised_urls() {
        let cluster = |extra: &[&str]| {
            let mut args = vec!["basalt", "--name", "b"];
            args.extend_from_slice(extra);
            initial_cluster(&parse(&args).unwrap().server)
        };
        let urls = ["--initial-advertise-peer-urls", "http://h:2"];
        let three = [
            &urls[..],
            &[
                "--initial-cluster",
                "a=http://h:1,b=http://h:2,c=http://h:3",
            ],
        ]
        .concat();
        let members = cluster(&three).unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(
            members[1],
            ("b".to_string(), vec!["http://h:2".to_string()])
        );
        let alone = cluster(&urls).unwrap();
        assert_eq!(
            alone,
            vec![("b".to_string(), vec!["http://h:2".to_string()])]
        );
        let refusals: [&[&str]; 3] = [
            &["--initial-cluster", "a=http://h:1"],
            &[
                "--initial-cluster",
                "b=http://h:9",
                "--initial-advertise-peer-urls",
                "http://h:2",
            ],
            &["--initial-cluster", "b"],
        ];
        for args in refusals {
            assert!(cluster(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn go_durations_parse() {
        let cases = [
            ("0", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("100ms", Duration::from_millis(100)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "s", "5", "5x", "-"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_flags_take_etcds_names() {
        let flags = parse(&["basalt"]).unwrap().server;
        assert_eq!(
            (flags.tls_min_version, flags.tls_max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );
        let flags = parse(&[
            "basalt",
            "--auto-tls",
            "--tls-max-version=TLS1.2",
            "--cipher-suites",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ])
        .unwrap()
        .server;
        assert!(flags.auto_tls);
        assert_eq!(flags.tls_max_version, TlsVersion::Tls12);
        assert_eq!(flags.cipher_suites.len(), 2);
        assert!(parse(&["basalt", "--tls-min-version", "TLS1.1"]).is_err());
    }

    #[test]
    fn subcommands_do_not_mix_with_server_flags() {
        let cli = parse(&["basalt", "dump-log", "--data-dir", "d"]).unwrap();
        assert!(matches!(cli.command, Some(Command::DumpLog(_))));
    }
}
