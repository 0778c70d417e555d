//! The `basalt` binary: parses etcd's flags, then either serves (the default) or runs one of the
//! offline tools. Everything it does lives in the crates; this file only wires them.

mod backup;
mod config;
mod tls;

use basalt_engine::crypt::{KeyFile, Keyring, SharedKeyring};
use basalt_engine::mvcc::Limits;
use basalt_net::node::{
    migrate, snapshot as snapshot_file, AutoCompaction, MemberDir, Node, NodeConfig, NodeError,
};
use basalt_proto::etcdserverpb::Member;
use clap::Parser;
use config::{
    normalize_go_flags, Cli, Command, MigrateFlags, NewMemberFlags, ServerFlags, SnapshotCommand,
};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

/// mimalloc, counting allocations for `/metrics` (`basalt_heap_allocations_total`), so a
/// benchmark can report allocations per request beside etcd's `go_memstats_mallocs_total`.
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Allocations are counted per thread and added to the shared total in steps of this
    /// many, so the hot path pays a thread-local increment, not an atomic one.
    const FLUSH_EVERY: u64 = 64;

    static TOTAL: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        // Const-initialised and without a destructor: safe to touch inside the allocator.
        static UNFLUSHED: Cell<u64> = const { Cell::new(0) };
    }

    /// Allocations made so far (each thread's last few below FLUSH_EVERY not yet in).
    pub fn total() -> u64 {
        TOTAL.load(Ordering::Relaxed)
    }

    fn count() {
        let _ = UNFLUSHED.try_with(|unflushed| {
            let n = unflushed.get() + 1;
            if n == FLUSH_EVERY {
                TOTAL.fetch_add(FLUSH_EVERY, Ordering::Relaxed);
                unflushed.set(0);
            } else {
                unflushed.set(n);
            }
        });
    }

    pub struct Counting;

    // SAFETY: every call is passed unchanged to mimalloc, which upholds GlobalAlloc's contract;
    // counting touches no memory the allocator hands out.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller's layout contract is forwarded as is.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: as above.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: `ptr` came from this allocator (so from mimalloc) with `layout`.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator (so from mimalloc) with `layout`.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }
}

/// How often the main thread looks for a stop signal or a failed raft core.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    basalt_net::metrics::set_heap_allocation_counter(alloc_count::total);
    let cli = match Cli::try_parse_from(normalize_go_flags(std::env::args())) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let outcome = match cli.command {
        None if cli.server.version => {
            print_version();
            Ok(())
        }
        None => serve(cli.server),
        Some(Command::DumpLog(flags)) => dump_log(flags),
        Some(Command::Check(flags)) => check(flags),
        Some(Command::Snapshot(command)) => snapshot(command),
        Some(Command::Migrate(flags)) => migrate_etcd(flags),
        Some(Command::Backup(command)) => match command.status {
            Some(config::BackupStatusCommand::Status { dir }) => backup::status(&dir),
            None => backup::run(command.flags),
        },
        Some(Command::Restore(flags)) => restore_backup(flags),
        Some(Command::Rekey(flags)) => rekey(flags),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("basalt: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_version() {
    println!("Basalt Version: {}", env!("CARGO_PKG_VERSION"));
    println!("etcd API Version: 3.5");
    println!(
        "OS/Arch: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
}

fn serve(flags: ServerFlags) -> Result<(), String> {
    let keyring = match &flags.encryption_key_file {
        Some(path) => Some(watch_key_file(path)?),
        None => None,
    };
    if let Some(keyring) = &keyring {
        basalt_net::metrics::set_encryption_keyring(keyring.clone());
    }
    let data_dir = flags.data_dir();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
    // etcd's rule: a data dir that holds a member restarts as that member, and only a dir that
    // holds none is bootstrapped or joined by the flags. Nothing is written before this.
    let plan = match basalt_net::node::existing_member(&data_dir, keyring.as_ref())
        .map_err(|e| e.to_string())?
    {
        Some(found) => restart_plan(&flags, &data_dir, found)?,
        None => cluster_plan(&flags, &data_dir)?,
    };
    basalt_net::node::remove_stray_joined_marker(&data_dir).map_err(|e| e.to_string())?;
    let config = server_config(&flags, &plan);
    let config = basalt_net::ServerConfig {
        client_tls: tls::client_tls(&flags, &data_dir)?,
        ..config
    };
    let (node, core) = Node::new(NodeConfig {
        data_dir: data_dir.clone(),
        member_id: config.member_id,
        cluster_id: config.cluster_id,
        name: flags.name.clone(),
        advertise_client_urls: flags.advertise_client_urls.clone(),
        listen_peer_urls: flags.listen_peer_urls.clone(),
        peer_tls: tls::peer_tls(&flags, &data_dir)?,
        initial_members: plan.members,
        join_existing: plan.join_existing,
        strict_reconfig_check: flags.strict_reconfig_check,
        initial_corrupt_check: flags.initial_corrupt_check,
        corrupt_check_interval: Some(flags.corrupt_check_time).filter(|t| !t.is_zero()),
        push_off_election_timeouts: match flags.push_off {
            true => flags.push_off_election_timeouts,
            false => 0,
        },
        snapshot_format: match flags.snapshot_format.as_str() {
            "basalt" => snapshot_file::SnapshotFormat::Basalt,
            _ => snapshot_file::SnapshotFormat::Etcd,
        },
        snapshot_count: flags.snapshot_count,
        max_wals: flags.max_wals as usize,
        heartbeat_interval_ms: flags.heartbeat_interval_ms,
        election_timeout_ms: flags.election_timeout_ms,
        quota_backend_bytes: match flags.quota_backend_bytes {
            bytes if bytes <= 0 => basalt_net::node::QUOTA_BACKEND_BYTES_DEFAULT,
            bytes => bytes as u64,
        },
        disk_reserve_bytes: flags.disk_reserve_bytes,
        auto_compaction: auto_compaction(
            &flags.auto_compaction_mode,
            &flags.auto_compaction_retention,
        )?,
        auth: basalt_net::auth::AuthOptions {
            tokens: basalt_net::auth::TokenOptions::parse(
                &flags.auth_token,
                Duration::from_secs(flags.auth_token_ttl),
            )?,
            bcrypt_cost: flags.bcrypt_cost,
            client_cert_auth: flags.client_cert_auth,
        },
        limits: Limits {
            max_txn_ops: config.max_txn_ops,
            max_request_bytes: config.max_request_bytes,
        },
        keyring,
    })
    .map_err(|e| e.to_string())?;
    let (member_id, cluster_id) = (config.member_id, config.cluster_id);
    let listen_client_urls = config.listen_client_urls.clone();
    let stop_requested = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop_requested.clone())
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    let kv = node.kv();
    // The raft core runs on client core 0: what that core accepts is proposed with no thread
    // hop (with one core, that is every request). Its ports are bound now and accept while the
    // core recovers; calls wait until the member is ready.
    let hosted: basalt_net::HostedTask = Box::new(move || Box::pin(core.run()));
    let server = basalt_net::spawn_hosting(config, move |_core| kv.clone(), Some(hosted))
        .map_err(|error| error.to_string())?;
    if let Err(error) = node.wait_started() {
        server.close_connections();
        let _ = node.stop();
        let _ = server.wait();
        if let NodeError::Removed = error {
            // etcd stops such a member without an error status: restarting it cannot help.
            eprintln!("basalt: {error}");
            return Ok(());
        }
        return Err(error.to_string());
    }
    eprintln!(
        "basalt: serving member {:x} ({}) of cluster {:x} on {} with data in {}",
        member_id,
        flags.name,
        cluster_id,
        listen_client_urls.join(","),
        data_dir.display()
    );
    while !stop_requested.load(Ordering::SeqCst) && !node.has_stopped() {
        std::thread::sleep(STOP_POLL_INTERVAL);
    }
    // Connections go first so no new request arrives; the node then answers what is queued,
    // checkpoints and closes its WAL, which lets core 0's executor end.
    server.close_connections();
    let stopped = node.stop().map_err(|e| e.to_string());
    let served = server.wait().map_err(|e| e.to_string());
    stopped.and(served)
}

/// How often a running server `stat`s its key file for a rotation.
const KEY_FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Loads `--encryption-key-file` (refusing to start without a usable one) and re-reads it on a
/// thread of its own whenever it changes, so that `basalt rekey` reaches the running server;
/// a changed file that cannot be used is logged and the keys in use stay.
fn watch_key_file(path: &std::path::Path) -> Result<SharedKeyring, String> {
    let mut key_file = KeyFile::load(path).map_err(|e| e.to_string())?;
    let shared = key_file.shared();
    std::thread::Builder::new()
        .name("basalt-key-file".into())
        .spawn(move || loop {
            std::thread::sleep(KEY_FILE_POLL_INTERVAL);
            match key_file.reload_if_changed() {
                Ok(Some(current)) => eprintln!(
                    "basalt: encryption key file {} changed: new data is sealed with key id \
                     {current}",
                    key_file.path().display()
                ),
                Ok(None) => {}
                Err(error) => {
                    eprintln!("basalt: {error}; keeping the keys loaded before")
                }
            }
        })
        .map_err(|e| format!("cannot start the key file watcher: {e}"))?;
    Ok(shared)
}

/// `basalt rekey`: the key file gains a new current key, written to a temporary file (mode
/// 0600), synced and renamed over the old one, so a server re-reading it sees the old or the
/// new file, never a part.
fn rekey(flags: config::RekeyFlags) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = &flags.encryption_key_file;
    let keyring = Keyring::load(path).map_err(|e| e.to_string())?;
    if let Some(data_dir) = &flags.data_dir {
        basalt_engine::wal::dump::summarize_log(data_dir, Some(&keyring))
            .map_err(|e| format!("{e}: the key file was not changed"))?;
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (text, id) =
        basalt_engine::crypt::rotated_key_file(&bytes, path).map_err(|e| e.to_string())?;
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".rekey");
    let temp = std::path::PathBuf::from(temp_name);
    let in_temp = |e: std::io::Error| format!("{}: {e}", temp.display());
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(in_temp)?;
    file.write_all(text.as_bytes()).map_err(in_temp)?;
    file.sync_all().map_err(in_temp)?;
    std::fs::rename(&temp, path).map_err(in_temp)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    println!(
        "key id {id} added to {} and made current: a running server seals new data with it \
         within a second. Run `etcdctl defrag` to rewrite the tree and drop WAL segments sealed \
         with older keys; `basalt check` lists the key ids still in use, and a line is removed \
         only once nothing uses it (then restart the server).",
        path.display()
    );
    Ok(())
}

/// An offline tool's `--encryption-key-file`, loaded once.
fn tool_keyring(path: Option<&std::path::Path>) -> Result<Option<SharedKeyring>, String> {
    path.map(|path| {
        Keyring::load(path)
            .map(Keyring::into_shared)
            .map_err(|e| e.to_string())
    })
    .transpose()
}

/// Who this member is and whom it starts with.
struct ClusterPlan {
    member_id: u64,
    cluster_id: u64,
    /// The founders of a new cluster, or the member list a running cluster sent.
    members: Vec<Member>,
    join_existing: bool,
}

/// How long a joining member waits for the running cluster to answer.
const JOIN_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The members `--initial-cluster` names with their ids, this member's id and the cluster id,
/// as a bootstrap with `token` derives them.
fn founders(
    name: &str,
    initial_cluster: Option<&str>,
    advertised: &[String],
    token: &str,
) -> Result<(Vec<Member>, u64, u64), String> {
    let members: Vec<Member> = config::parse_initial_cluster(initial_cluster, name, advertised)?
        .into_iter()
        .map(|(name, urls)| Member {
            id: config::member_id(&urls, token),
            name,
            peer_ur_ls: urls,
            ..Member::default()
        })
        .collect();
    let own_id = members
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.id)
        .expect("parse_initial_cluster checks that this member is named");
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cluster_id = config::cluster_id(&ids, token);
    Ok((members, own_id, cluster_id))
}

/// etcd's bootstrap of a dir that holds no member: a new cluster's members and ids follow from
/// `--initial-cluster` and the token; a member started with `--initial-cluster-state existing`
/// asks the others for the cluster and finds itself by its advertised peer URLs (it must have
/// been added first).
fn cluster_plan(flags: &ServerFlags, data_dir: &std::path::Path) -> Result<ClusterPlan, String> {
    let (members, member_id, cluster_id) = founders(
        &flags.name,
        flags.initial_cluster.as_deref(),
        &flags.initial_advertise_peer_urls,
        &flags.initial_cluster_token,
    )?;
    if flags.initial_cluster_state == "new" {
        return Ok(ClusterPlan {
            member_id,
            cluster_id,
            members,
            join_existing: false,
        });
    }
    let cluster = ask_peers(flags, data_dir)
        .map_err(|error| format!("cannot reach the cluster to join it: {error}"))?;
    let mut advertised = flags.initial_advertise_peer_urls.clone();
    advertised.sort();
    let Some(me) = cluster.members.iter().find(|m| {
        let mut urls = m.peer_ur_ls.clone();
        urls.sort();
        urls == advertised
    }) else {
        return Err(format!(
            "no member of cluster {:x} has the peer URLs {}: add this member first (etcdctl \
             member add)",
            cluster.cluster_id,
            advertised.join(",")
        ));
    };
    Ok(ClusterPlan {
        member_id: me.id,
        cluster_id: cluster.cluster_id,
        members: cluster.members.clone(),
        join_existing: true,
    })
}

/// A dir that holds a member restarts as that member: `--initial-cluster-state`,
/// `--initial-cluster` and `--initial-cluster-token` are ignored, as etcd ignores them.
fn restart_plan(
    flags: &ServerFlags,
    data_dir: &std::path::Path,
    found: MemberDir,
) -> Result<ClusterPlan, String> {
    eprintln!(
        "basalt: server has been already initialized (data dir {}, dir type member): member \
         {:x} of cluster {:x} restarts from it; --initial-cluster, --initial-cluster-state and \
         --initial-cluster-token are ignored",
        data_dir.display(),
        found.member_id,
        found.cluster_id
    );
    if found.awaits_first_snapshot {
        // It joined but stopped before the cluster sent it anything: only the cluster knows its
        // peers, so it asks the members the flags name (as the join did).
        let cluster = ask_peers(flags, data_dir).map_err(|error| {
            format!(
                "this member joined cluster {:x} and has received nothing from it yet; cannot \
                 reach the cluster to learn its peers: {error}",
                found.cluster_id
            )
        })?;
        if cluster.cluster_id != found.cluster_id
            || !cluster.members.iter().any(|m| m.id == found.member_id)
        {
            return Err(format!(
                "the peers answered for cluster {:x} without member {:x}; this dir holds member \
                 {:x} of cluster {:x}",
                cluster.cluster_id, found.member_id, found.member_id, found.cluster_id
            ));
        }
        return Ok(ClusterPlan {
            member_id: found.member_id,
            cluster_id: found.cluster_id,
            members: cluster.members,
            join_existing: true,
        });
    }
    // Only consulted to repair a dir an older Basalt bootstrapped without checkpointing its
    // founders (see NodeConfig::initial_members).
    let members = founders(
        &flags.name,
        flags.initial_cluster.as_deref(),
        &flags.initial_advertise_peer_urls,
        &flags.initial_cluster_token,
    )
    .map(|(members, _, _)| members)
    .unwrap_or_default();
    Ok(ClusterPlan {
        member_id: found.member_id,
        cluster_id: found.cluster_id,
        members,
        join_existing: false,
    })
}

/// The member list of the running cluster, from the first other member of `--initial-cluster`
/// that answers.
fn ask_peers(
    flags: &ServerFlags,
    data_dir: &std::path::Path,
) -> Result<basalt_net::peer::ClusterInfo, String> {
    let others: Vec<String> = config::initial_cluster(flags)?
        .into_iter()
        .filter(|(name, _)| *name != flags.name)
        .flat_map(|(_, urls)| urls)
        .collect();
    let peer_tls = tls::peer_tls(flags, data_dir)?;
    let connector = peer_tls
        .as_ref()
        .map(basalt_net::tls::TlsConnector::new)
        .transpose()
        .map_err(|e| format!("peer TLS: {e}"))?;
    basalt_net::peer::fetch_cluster(&others, JOIN_FETCH_TIMEOUT, connector.as_ref())
        .map_err(|e| e.to_string())
}

fn server_config(flags: &ServerFlags, plan: &ClusterPlan) -> basalt_net::ServerConfig {
    let member_id = plan.member_id;
    basalt_net::ServerConfig {
        name: flags.name.clone(),
        listen_client_urls: flags.listen_client_urls.clone(),
        advertise_client_urls: flags.advertise_client_urls.clone(),
        advertise_peer_urls: flags.initial_advertise_peer_urls.clone(),
        cores: flags.cores,
        max_txn_ops: flags.max_txn_ops,
        max_request_bytes: flags.max_request_bytes,
        max_concurrent_streams: flags.max_concurrent_streams,
        cluster_id: plan.cluster_id,
        member_id,
        watch_progress_notify_interval_ms: flags.watch_progress_notify_interval.as_millis() as u64,
        election_timeout_ms: flags.election_timeout_ms,
        busy_poll: Some(flags.busy_poll).filter(|spin| !spin.is_zero()),
        ..basalt_net::ServerConfig::default()
    }
}

/// Prints what the checker found; any problem (named by page and file offset) fails the command.
fn check(flags: config::CheckFlags) -> Result<(), String> {
    let keyring = tool_keyring(flags.encryption_key_file.as_deref())?;
    check_wal_keys(
        &flags.data_dir,
        keyring.as_ref().map(|k| k.load_full()).as_deref(),
    )?;
    let db = basalt_net::node::db_path(&flags.data_dir);
    let report = basalt_engine::btree::check(&db, keyring.as_ref())
        .map_err(|e| format!("{}: {e}", db.display()))?;
    println!(
        "{}: page size {} B, meta seq {}, txn {}, applied index {}, {} tree pages, {} free, {} leaked",
        db.display(),
        report.page_size_bytes,
        report.meta_seq,
        report.txn_id,
        report.applied_index,
        report.tree_pages,
        report.free_pages,
        report.leaked_pages
    );
    for (bucket, entries) in &report.buckets {
        println!("bucket {bucket}: {entries} entries");
    }
    match &report.encrypted {
        None => println!("encryption: none (the tree file is plaintext)"),
        Some(slots) => {
            for (id, pages) in slots {
                println!("encryption: key id {id} seals {pages} pages");
            }
        }
    }
    for problem in &report.problems {
        println!(
            "problem: page {} at offset {}: {}",
            problem.page, problem.offset, problem.reason
        );
    }
    match report.problems.len() {
        0 => Ok(()),
        n => Err(format!("{} has {n} problem(s)", db.display())),
    }
}

/// Lists the key ids the WAL's segments are sealed with (so an old key line is removed only once
/// nothing names it), after checking the key file opens them (the header's key check).
fn check_wal_keys(data_dir: &std::path::Path, keyring: Option<&Keyring>) -> Result<(), String> {
    use basalt_engine::wal::dump::{segment_key_ids, summarize_log};
    let segments = segment_key_ids(data_dir).map_err(|e| e.to_string())?;
    summarize_log(data_dir, keyring).map_err(|e| e.to_string())?;
    let mut ids: Vec<u32> = segments.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    let named: Vec<String> = ids
        .iter()
        .map(|&id| match id {
            basalt_engine::crypt::PLAINTEXT_KEY_ID => "none (plaintext)".to_owned(),
            id => id.to_string(),
        })
        .collect();
    println!(
        "{}: {} segments, encryption key ids in use: {}",
        basalt_engine::wal::wal_dir(data_dir).display(),
        segments.len(),
        match named.is_empty() {
            true => "none".to_owned(),
            false => named.join(", "),
        }
    );
    Ok(())
}

fn dump_log(flags: config::DumpLogFlags) -> Result<(), String> {
    use basalt_engine::wal::dump::{dump_log, DumpFilter};
    let kinds = match &flags.entry_type {
        Some(list) => DumpFilter::parse_kinds(list)?,
        None => Vec::new(),
    };
    let filter = DumpFilter {
        start_index: Some(flags.start_index),
        end_index: flags.end_index,
        kinds,
    };
    let keyring = tool_keyring(flags.encryption_key_file.as_deref())?.map(|k| k.load_full());
    let summary = dump_log(
        &flags.data_dir,
        &filter,
        keyring.as_deref(),
        &mut std::io::stdout().lock(),
    )
    .map_err(|e| e.to_string())?;
    match summary.corruption {
        Some((file, offset, reason)) => Err(format!(
            "corrupt WAL segment {} at offset {offset}: {reason}",
            file.display()
        )),
        None => Ok(()),
    }
}

fn snapshot(command: SnapshotCommand) -> Result<(), String> {
    match command {
        SnapshotCommand::Restore { file, flags } => {
            let options = snapshot_file::RestoreOptions {
                skip_hash_check: flags.skip_hash_check,
            };
            let (data_dir, member) = new_member(&flags.member)?;
            snapshot_file::restore(&file, &data_dir, options, &member)?;
            println!(
                "restored snapshot {} into {} for {}",
                file.display(),
                data_dir.display(),
                describe(&flags.member, &member),
            );
            Ok(())
        }
        SnapshotCommand::Status {
            file,
            write_out,
            encryption_key_file,
        } => {
            let keyring = tool_keyring(encryption_key_file.as_deref())?;
            let status = snapshot_file::status(&file, keyring.as_ref())?;
            match write_out.as_str() {
                "json" => println!(
                    "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
                    status.hash, status.revision, status.total_keys, status.total_size_bytes
                ),
                "table" => {
                    println!("+----------+----------+------------+------------+");
                    println!("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |");
                    println!("+----------+----------+------------+------------+");
                    println!(
                        "| {:8x} | {:8} | {:10} | {:>10} |",
                        status.hash, status.revision, status.total_keys, status.total_size_bytes
                    );
                    println!("+----------+----------+------------+------------+");
                }
                _ => println!(
                    "{:x}, {}, {}, {}",
                    status.hash, status.revision, status.total_keys, status.total_size_bytes
                ),
            }
            Ok(())
        }
    }
}

/// The data dir to create and the member it will hold, from etcdutl's restore flags.
fn new_member(
    flags: &NewMemberFlags,
) -> Result<(std::path::PathBuf, snapshot_file::RestoredMember), String> {
    let data_dir = flags
        .data_dir
        .clone()
        .unwrap_or_else(|| format!("{}.basalt", flags.name).into());
    let (members, member_id, cluster_id) = founders(
        &flags.name,
        flags.initial_cluster.as_deref(),
        &flags.initial_advertise_peer_urls,
        &flags.initial_cluster_token,
    )?;
    let member = snapshot_file::RestoredMember {
        member_id,
        cluster_id,
        members,
        keyring: tool_keyring(flags.encryption_key_file.as_deref())?,
    };
    Ok((data_dir, member))
}

fn describe(flags: &NewMemberFlags, member: &snapshot_file::RestoredMember) -> String {
    format!(
        "member {} ({:x}) of cluster {:x} ({} members)",
        flags.name,
        member.member_id,
        member.cluster_id,
        member.members.len()
    )
}

fn restore_backup(flags: config::PitrFlags) -> Result<(), String> {
    let (data_dir, member) = new_member(&flags.member)?;
    let restored = backup::restore(&flags, &data_dir, &member)?;
    println!(
        "{restored} into {} for {}",
        data_dir.display(),
        describe(&flags.member, &member)
    );
    Ok(())
}

fn migrate_etcd(flags: MigrateFlags) -> Result<(), String> {
    let (data_dir, member) = new_member(&flags.member)?;
    let migrated = migrate::migrate(&flags.from_etcd_data_dir, &data_dir, &member)?;
    let replayed = if migrated.commit_index > migrated.consistent_index {
        format!(
            "then WAL entries {}..={} ({} requests applied, {} entries with nothing to apply)",
            migrated.consistent_index + 1,
            migrated.commit_index,
            migrated.requests_applied,
            migrated.entries_skipped,
        )
    } else {
        "no WAL entry committed after it".to_owned()
    };
    println!(
        "migrated etcd member {:x} of {} into {} for {}: {} (consistent index {}), {replayed}; \
         revision {}",
        migrated.etcd_member_id,
        flags.from_etcd_data_dir.display(),
        data_dir.display(),
        describe(&flags.member, &member),
        migrated.db.display(),
        migrated.consistent_index,
        migrated.revision,
    );
    Ok(())
}

/// etcd's reading of the auto-compaction flags: in periodic mode a bare number is hours,
/// otherwise a Go duration; in revision mode a count of revisions; 0 turns it off.
fn auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    let invalid = |reason: String| format!("--auto-compaction-retention {retention:?}: {reason}");
    if retention.trim() == "0" {
        return Ok(AutoCompaction::Off);
    }
    match mode {
        "revision" => retention
            .parse::<i64>()
            .map(AutoCompaction::Revision)
            .map_err(|e| invalid(e.to_string())),
        _ => {
            let period = match retention.parse::<f64>() {
                Ok(hours) if hours >= 0.0 => Duration::from_secs_f64(hours * 3600.0),
                Ok(_) => return Err(invalid("negative".into())),
                Err(_) => config::parse_go_duration(retention).map_err(invalid)?,
            };
            Ok(AutoCompaction::Periodic(period))
        }
    }
}
