//! Snapshot files, as etcd's Maintenance.Snapshot streams them and `etcdutl snapshot` reads
//! them, in two formats told apart by their first bytes:
//!
//! ```text
//! etcd (the default):  | bbolt file with etcd's buckets (engine::bbolt, engine::interchange) | sha256: 32 bytes |
//! Basalt (faster):     | B+tree file (engine::btree format, carrying the applied index)      | sha256: 32 bytes |
//! ```
//!
//! Either copy is built from a read snapshot (a fixed root) on a thread of its own, so writes
//! go on while it is made. `restore` turns a snapshot file of either format (or a bare etcd
//! `member/snap/db`, with `--skip-hash-check`) into a new data directory; the member that
//! starts on it begins its log at the snapshot's applied index (etcd's consistent index).

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use basalt_engine::apply::Applier;
use basalt_engine::bbolt::{self, BboltFile};
use basalt_engine::btree::{self, Db, ReadTxn};
use basalt_engine::crypt::SharedKeyring;
use basalt_engine::interchange;
use basalt_engine::mvcc::{read_consistent_index, BtreeBackend, KvStore, Limits};
use basalt_engine::wal::{wal_dir, DmaStorage, RecordRef, Wal, WalOptions};
use basalt_proto::etcdserverpb::Member;
use basalt_raft::HardState;
use sha2::{Digest, Sha256};

use super::{codec, datadir};

/// Bytes of the sha256 trailer.
pub const SHA256_BYTES: usize = 32;
/// Bytes read to tell a file's format.
const SNIFF_BYTES: usize = 2 * bbolt::PAGE_SIZE;

/// The layout of the tree inside a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotFormat {
    /// etcd's bbolt file: `etcdutl` and etcd read it.
    #[default]
    Etcd,
    /// A copy of Basalt's B+tree: no conversion, read only by Basalt.
    Basalt,
}

/// Writes the state `read` shows into a new snapshot tree file at `path` (no trailer yet). With
/// a keyring the file is sealed, as every file of an encrypted member's data dir is; its
/// plaintext is read back with [`btree::PlainReader`].
pub fn write_tree(
    read: &ReadTxn,
    path: &Path,
    format: SnapshotFormat,
    keyring: Option<&SharedKeyring>,
) -> Result<(), String> {
    let _ = fs::remove_file(path);
    match format {
        SnapshotFormat::Basalt => copy_tree(read, path, keyring),
        SnapshotFormat::Etcd => {
            interchange::export_etcd(read, path, keyring).map_err(|e| e.to_string())
        }
    }
}

/// Writes the state `read` shows into a new, compact, durable tree file at `path` (sealed
/// with a keyring).
pub fn copy_tree(
    read: &ReadTxn,
    path: &Path,
    keyring: Option<&SharedKeyring>,
) -> Result<(), String> {
    let _ = fs::remove_file(path);
    let applied_index = read_consistent_index(read).map_err(|e| e.to_string())?;
    let options = btree::Options {
        keyring: keyring.cloned(),
        ..btree::Options::default()
    };
    let db = btree::open(path, options).map_err(|e| e.to_string())?;
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    let buckets: Vec<String> = read.buckets().map(str::to_owned).collect();
    for name in &buckets {
        let mut bucket = txn.bucket(name).map_err(|e| e.to_string())?;
        let mut cursor = read.cursor(name);
        let mut entry = cursor.first().map_err(|e| e.to_string())?;
        while let Some((key, value)) = entry {
            bucket.insert(key, value).map_err(|e| e.to_string())?;
            entry = cursor.next().map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())?;
    db.checkpoint(applied_index).map_err(|e| e.to_string())
}

/// The sha256 of a file's plaintext (an encrypted copy's pages opened with `keyring`).
pub fn sha256_of(
    path: &Path,
    keyring: Option<&SharedKeyring>,
) -> Result<[u8; SHA256_BYTES], String> {
    let in_file = |e: btree::Error| format!("{}: {e}", path.display());
    let mut reader = btree::PlainReader::open(path, keyring).map_err(in_file)?;
    let mut hasher = Sha256::new();
    loop {
        let chunk = reader.read_chunk(1 << 20).map_err(in_file)?;
        if chunk.is_empty() {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&chunk);
    }
}

/// Snapshot copies a crash or a kill left in `snap_dir`: the Snapshot RPC's
/// (`db.snapshot-<id>.tmp`) and those made to send to a peer (`send-<to>-<index>.db`). Deleted
/// at start, before anything is served.
pub(super) fn remove_leftover_copies(snap_dir: &Path) {
    let Ok(entries) = fs::read_dir(snap_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let leftover = (name.starts_with(RPC_COPY_PREFIX) && name.ends_with(RPC_COPY_SUFFIX))
            || (name.starts_with(SEND_COPY_PREFIX) && name.ends_with(SEND_COPY_SUFFIX));
        if leftover {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => eprintln!(
                    "basalt: deleted a leftover snapshot copy {}",
                    path.display()
                ),
                Err(error) => eprintln!("basalt: cannot delete {}: {error}", path.display()),
            }
        }
    }
}

const RPC_COPY_PREFIX: &str = "db.snapshot-";
const RPC_COPY_SUFFIX: &str = ".tmp";
const SEND_COPY_PREFIX: &str = "send-";
const SEND_COPY_SUFFIX: &str = ".db";

/// Where the Snapshot RPC's copy number `id` is made.
pub(super) fn rpc_copy_path(snap_dir: &Path, id: u64) -> PathBuf {
    snap_dir.join(format!("{RPC_COPY_PREFIX}{id:x}{RPC_COPY_SUFFIX}"))
}

/// Where the copy of the tree at `index` sent to member `to` is made.
pub(super) fn send_copy_path(snap_dir: &Path, to: u64, index: u64) -> PathBuf {
    snap_dir.join(format!(
        "{SEND_COPY_PREFIX}{to:x}-{index}{SEND_COPY_SUFFIX}"
    ))
}

/// The sha256 of the first `len` bytes of a file, read in pieces.
fn sha256_of_prefix(path: &Path, len: u64) -> Result<[u8; SHA256_BYTES], String> {
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = file.take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Checks a Basalt snapshot file's trailer and copies its tree to `to` (sealed with a keyring,
/// so not even a restore's staging dir holds the plaintext).
fn verified_tree(
    snapshot: &Path,
    to: &Path,
    keyring: Option<&SharedKeyring>,
) -> Result<(), String> {
    let bytes = fs::read(snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?;
    if bytes.len() <= SHA256_BYTES {
        return Err(format!(
            "{} is too short to be a snapshot",
            snapshot.display()
        ));
    }
    let (tree, trailer) = bytes.split_at(bytes.len() - SHA256_BYTES);
    let digest: [u8; SHA256_BYTES] = Sha256::digest(tree).into();
    if digest != trailer {
        return Err(format!(
            "{}: sha256 of the contents does not match the trailer (truncated or corrupt)",
            snapshot.display()
        ));
    }
    let at = |e: std::io::Error| format!("{}: {e}", to.display());
    let Some(keyring) = keyring else {
        fs::write(to, tree).map_err(at)?;
        return fs::File::open(to).and_then(|f| f.sync_all()).map_err(at);
    };
    let page_size = btree::peek_page_size(tree)
        .filter(|&ps| ps > 0 && tree.len().is_multiple_of(ps))
        .ok_or_else(|| {
            format!(
                "{}: not whole pages of a Basalt tree (an encrypted tree file is not a snapshot)",
                snapshot.display()
            )
        })?;
    let out = btree::SealedWriter::create(to, keyring, page_size)
        .map_err(|e| format!("{}: {e}", to.display()))?;
    out.write_at(tree, 0).map_err(at)?;
    out.set_len(tree.len() as u64).map_err(at)?;
    out.sync().map_err(at)
}

/// A snapshot file's format, told by its first bytes, and its length.
fn format_of(snapshot: &Path) -> Result<(SnapshotFormat, u64), String> {
    let at = |e: std::io::Error| format!("{}: {e}", snapshot.display());
    let file = fs::File::open(snapshot).map_err(at)?;
    let len = file.metadata().map_err(at)?.len();
    let mut first = vec![0u8; SNIFF_BYTES.min(len as usize)];
    file.read_exact_at(&mut first, 0).map_err(at)?;
    let meta_1 = first.get(bbolt::PAGE_SIZE..).unwrap_or_default();
    if bbolt::looks_like_bbolt(&first) || bbolt::looks_like_bbolt(meta_1) {
        return Ok((SnapshotFormat::Etcd, len));
    }
    if btree::looks_like_btree(&first) {
        return Ok((SnapshotFormat::Basalt, len));
    }
    let mentions = |needle: &[u8]| first.windows(needle.len()).any(|w| w == needle);
    if first.first() == Some(&b'{') || mentions(b"\"Root\"") {
        return Err(format!(
            "{}: an etcd v2 store (the v2 JSON store of a member/snap/*.snap file), which Basalt \
             does not read: expected an etcd v3 snapshot (bbolt), e.g. from `etcdctl snapshot \
             save` against etcd 3.4 or later",
            snapshot.display()
        ));
    }
    let shown: String = first.iter().take(24).map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "{}: not a snapshot: expected an etcd snapshot (bbolt, a meta page with magic \
         0xed0cdaed at byte 16) or a Basalt snapshot (magic BASALTBT at byte 16); the file \
         starts {shown}",
        snapshot.display()
    ))
}

/// The bytes of an etcd snapshot that are its bbolt file, after checking etcd's sha256
/// trailer as etcdutl does (`len % 512 == 32` means a trailer is there).
fn etcd_tree_len(snapshot: &Path, len: u64, skip_hash_check: bool) -> Result<u64, String> {
    if bbolt::has_sha256_trailer(len) {
        let tree_len = len - bbolt::SHA256_TRAILER_BYTES;
        if !skip_hash_check {
            let digest = sha256_of_prefix(snapshot, tree_len)?;
            let mut trailer = [0u8; SHA256_BYTES];
            fs::File::open(snapshot)
                .and_then(|f| f.read_exact_at(&mut trailer, tree_len))
                .map_err(|e| format!("{}: {e}", snapshot.display()))?;
            if digest != trailer {
                return Err(format!(
                    "{}: sha256 of the first {tree_len} bytes does not match etcd's trailer \
                     (truncated or corrupt; --skip-hash-check reads it anyway)",
                    snapshot.display()
                ));
            }
        }
        return Ok(tree_len);
    }
    if !len.is_multiple_of(bbolt::PAGE_SIZE as u64) {
        return Err(format!(
            "{}: {len} bytes is neither whole {}-byte pages nor pages and etcd's 32-byte sha256 \
             trailer: truncated",
            snapshot.display(),
            bbolt::PAGE_SIZE
        ));
    }
    if !skip_hash_check {
        return Err(format!(
            "{}: snapshot missing hash but --skip-hash-check=false (a bare etcd db file has no \
             sha256 trailer)",
            snapshot.display()
        ));
    }
    Ok(len)
}

/// What `basalt snapshot status` prints (etcdutl's columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size_bytes: u64,
}

/// Reads a snapshot file of either format, or a member's tree file (`member/snap/db`, read in
/// place; an encrypted one needs `keyring`): checks it and reports its revision, record count
/// and size (for an etcd file, exactly what `etcdutl snapshot status` reports).
pub fn status(snapshot: &Path, keyring: Option<&SharedKeyring>) -> Result<SnapshotStatus, String> {
    let (format, len) = format_of(snapshot)?;
    let in_file = |e: String| format!("{}: {e}", snapshot.display());
    if format == SnapshotFormat::Etcd {
        let tree_len = etcd_tree_len(snapshot, len, !bbolt::has_sha256_trailer(len))?;
        let file =
            BboltFile::open(snapshot, tree_len).map_err(|e| in_file(format!("bbolt file {e}")))?;
        let status = interchange::etcd_status(&file).map_err(|e| in_file(e.to_string()))?;
        return Ok(SnapshotStatus {
            hash: status.hash,
            revision: status.revision,
            total_keys: status.total_keys,
            total_size_bytes: status.total_size_bytes,
        });
    }
    if is_encrypted_tree(snapshot)? {
        // Snapshots are streamed in plaintext; only a member's own files are sealed. Read in
        // place, decrypted in memory: a plaintext copy must not land beside it.
        let db = btree::open_read_only(snapshot, keyring).map_err(|e| in_file(e.to_string()))?;
        return tree_status(db, len).map_err(in_file);
    }
    let scratch = scratch_path(snapshot);
    verified_tree(snapshot, &scratch, None)?;
    let result = fs::metadata(&scratch)
        .map_err(|e| e.to_string())
        .and_then(|m| {
            let db = btree::open(&scratch, btree::Options::default()).map_err(|e| e.to_string())?;
            tree_status(db, m.len())
        });
    let _ = fs::remove_file(&scratch);
    result
}

fn is_encrypted_tree(path: &Path) -> Result<bool, String> {
    let mut head = [0u8; 8];
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = file
        .read_at(&mut head, 0)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(btree::is_sealed(&head[..n]))
}

/// What `status` reports of an open tree of `total_size_bytes`.
fn tree_status(db: Db, total_size_bytes: u64) -> Result<SnapshotStatus, String> {
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let mut hash = 0u32;
    let mut total_keys = 0u64;
    let buckets: Vec<String> = read.buckets().map(str::to_owned).collect();
    for name in &buckets {
        hash = crc32c::crc32c_append(hash, name.as_bytes());
        let mut cursor = read.cursor(name);
        let mut entry = cursor.first().map_err(|e| e.to_string())?;
        while let Some((key, value)) = entry {
            hash = crc32c::crc32c_append(hash, key);
            hash = crc32c::crc32c_append(hash, value);
            total_keys += 1;
            entry = cursor.next().map_err(|e| e.to_string())?;
        }
    }
    drop(read);
    let store = KvStore::open(BtreeBackend::open(db).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    Ok(SnapshotStatus {
        hash,
        revision: store.current_revision(),
        total_keys,
        total_size_bytes,
    })
}

/// etcdutl's restore flags that change what is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Read an etcd file whose sha256 trailer is missing or wrong.
    pub skip_hash_check: bool,
}

/// The member a restored data dir holds, from `snapshot restore`'s `--name`,
/// `--initial-cluster`, `--initial-cluster-token` and `--initial-advertise-peer-urls`.
#[derive(Debug, Clone)]
pub struct RestoredMember {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The new cluster's members (the restored tree's own list names the old cluster).
    pub members: Vec<Member>,
    /// `--encryption-key-file`: the new data dir is sealed with it (None: plaintext).
    pub keyring: Option<SharedKeyring>,
}

/// Builds a new data directory from a snapshot file of either format (what `etcdutl snapshot
/// restore` does): the tree, with the new cluster's members, and a log that names `member` and
/// starts at the tree's applied index. The dir then holds a member: it starts as that member
/// whatever the bootstrap flags say. Everything is made in a staging directory inside
/// `data_dir` and moved into place only when whole, so a refused or failed restore leaves
/// nothing behind.
pub fn restore(
    snapshot: &Path,
    data_dir: &Path,
    options: RestoreOptions,
    member: &RestoredMember,
) -> Result<(), String> {
    restore_replaying(snapshot, data_dir, options, member, |db, applied| {
        Ok((db, applied))
    })
}

/// [`restore`], with `replay` given the restored tree and its applied index before the member
/// is recorded; it returns them advanced (a point-in-time restore applies a backup's events
/// there). A failed replay leaves nothing behind, as a failed restore does.
pub fn restore_replaying(
    snapshot: &Path,
    data_dir: &Path,
    options: RestoreOptions,
    member: &RestoredMember,
    replay: impl FnOnce(Db, u64) -> Result<(Db, u64), String>,
) -> Result<(), String> {
    refuse_existing(data_dir)?;
    let (format, len) = format_of(snapshot)?;
    make_member_dir(data_dir, member, |staging| {
        let tree = tree_options(member);
        let (db, applied) = build_data_dir(snapshot, format, len, staging, options, tree)?;
        replay(db, applied)
    })
}

/// A restore or migration never writes over a member's data.
pub(super) fn refuse_existing(data_dir: &Path) -> Result<(), String> {
    if datadir::member_dir(data_dir).exists() {
        return Err(format!("data dir {} already exists", data_dir.display()));
    }
    Ok(())
}

/// Makes `data_dir/member` for `member`: `build` fills a staging data dir inside `data_dir`
/// with a tree and returns it with its applied index; the tree then takes the new cluster's
/// members, the log names the member, and only the whole dir is moved into place. A failure
/// leaves nothing behind (not even `data_dir`, when this made it).
pub(super) fn make_member_dir(
    data_dir: &Path,
    member: &RestoredMember,
    build: impl FnOnce(&Path) -> Result<(Db, u64), String>,
) -> Result<(), String> {
    let created_data_dir = !data_dir.exists();
    fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let staging = data_dir.join(".member.restoring");
    let _ = fs::remove_dir_all(&staging);
    let made = build(&staging)
        .and_then(|(db, applied)| record_member(db, &staging, member, applied))
        .and_then(|()| {
            fs::rename(datadir::member_dir(&staging), datadir::member_dir(data_dir))
                .and_then(|()| fs::File::open(data_dir)?.sync_all())
                .map_err(|e| format!("{}: {e}", data_dir.display()))
        });
    let _ = fs::remove_dir_all(&staging);
    if made.is_err() && created_data_dir {
        let _ = fs::remove_dir(data_dir);
    }
    made
}

fn build_data_dir(
    snapshot: &Path,
    format: SnapshotFormat,
    len: u64,
    data_dir: &Path,
    options: RestoreOptions,
    tree: btree::Options,
) -> Result<(Db, u64), String> {
    datadir::prepare(data_dir).map_err(|e| e.to_string())?;
    let db_path = datadir::db_path(data_dir);
    if format == SnapshotFormat::Etcd {
        let tree_len = etcd_tree_len(snapshot, len, options.skip_hash_check)?;
        let in_file = |e: String| format!("{}: {e}", snapshot.display());
        let file =
            BboltFile::open(snapshot, tree_len).map_err(|e| in_file(format!("bbolt file {e}")))?;
        let db = btree::open(&db_path, tree).map_err(|e| e.to_string())?;
        let imported = interchange::import_etcd(&file, &db).map_err(|e| in_file(e.to_string()))?;
        return Ok((db, imported.consistent_index));
    }
    verified_tree(snapshot, &db_path, tree.keyring.as_ref())?;
    let db = btree::open(&db_path, tree).map_err(|e| e.to_string())?;
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let applied = read_consistent_index(&read).map_err(|e| e.to_string())?;
    let durable = db.durable_applied_index().map_err(|e| e.to_string())?;
    if applied != durable {
        return Err(format!(
            "snapshot tree holds index {applied} but its checkpoint says {durable}"
        ));
    }
    drop(read);
    Ok((db, applied))
}

/// How a restored or migrated member's tree is written: sealed with its keys, if any.
pub(super) fn tree_options(member: &RestoredMember) -> btree::Options {
    btree::Options {
        keyring: member.keyring.clone(),
        ..btree::Options::default()
    }
}

/// Makes a restored tree (`db`, at `applied`) `member`'s: the new cluster's members replace the
/// old cluster's in the tree, and the log names the member.
fn record_member(
    db: Db,
    data_dir: &Path,
    member: &RestoredMember,
    applied: u64,
) -> Result<(), String> {
    let mut applier = Applier::open(db, Limits::default()).map_err(|e| e.to_string())?;
    applier.reset_members(&member.members);
    applier.commit().map_err(|e| e.to_string())?;
    applier
        .db()
        .checkpoint(applied)
        .map_err(|e| e.to_string())?;
    drop(applier);
    write_restored_log(data_dir, member, applied)
}

/// The restored member's log: its metadata, a snapshot marker at the tree's applied index
/// (the log starts after it) and a hard state committing it, as `etcdutl` writes them.
fn write_restored_log(data_dir: &Path, member: &RestoredMember, index: u64) -> Result<(), String> {
    const TERM: u64 = 1;
    let dir = wal_dir(data_dir);
    let metadata = codec::encode_metadata(member.member_id, member.cluster_id);
    let marker = codec::encode_snapshot(&super::core::conf_state_of(&member.members));
    let hard_state = codec::encode_hard_state(&HardState {
        term: TERM,
        vote: 0,
        commit: index,
    });
    let keyring = member.keyring.clone();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("basalt-restore")
        .spawn(move || async move {
            let options = WalOptions {
                keyring,
                ..WalOptions::default()
            };
            let (wal, _) = Wal::open(DmaStorage, dir, options).await?;
            wal.append(&[
                RecordRef::metadata(&metadata),
                RecordRef::snapshot(TERM, index, &marker),
                RecordRef::hard_state(&hard_state),
            ])
            .await?;
            wal.close().await
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("writing the restored member's WAL: {e}"))
}

fn scratch_path(snapshot: &Path) -> PathBuf {
    let mut name = snapshot.as_os_str().to_owned();
    name.push(format!(".{}.check", std::process::id()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_restores_and_a_damaged_one_is_refused() {
        let root = std::env::temp_dir().join(format!("basalt-snapfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let source = btree::open(root.join("source.db"), btree::Options::default()).unwrap();
        let mut backend = BtreeBackend::open(source.clone()).unwrap();
        let mut store = KvStore::open(backend).unwrap();
        store
            .put(&basalt_proto::etcdserverpb::PutRequest {
                key: b"k".to_vec().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            })
            .unwrap();
        backend = store.into_backend();
        backend.commit(9).unwrap();

        let copy = root.join("copy.db");
        copy_tree(&source.begin_read().unwrap(), &copy, None).unwrap();
        let mut file = fs::read(&copy).unwrap();
        file.extend_from_slice(&sha256_of(&copy, None).unwrap());
        let snapshot = root.join("snap.db");
        fs::write(&snapshot, &file).unwrap();

        let got = status(&snapshot, None).unwrap();
        assert_eq!(
            (got.revision, got.total_keys),
            (2, 2),
            "one record + the consistent index"
        );
        let member = RestoredMember {
            keyring: None,
            member_id: 7,
            cluster_id: 8,
            members: vec![Member {
                id: 7,
                name: "r".into(),
                ..Member::default()
            }],
        };
        let restored = root.join("restored");
        restore(&snapshot, &restored, RestoreOptions::default(), &member).unwrap();
        let found = datadir::existing_member(&restored, None).unwrap().unwrap();
        assert_eq!(
            (
                found.member_id,
                found.cluster_id,
                found.awaits_first_snapshot
            ),
            (7, 8, false),
            "the restored dir holds the member it was restored as"
        );
        assert!(
            restore(&snapshot, &restored, RestoreOptions::default(), &member).is_err(),
            "never overwrites"
        );

        *file.last_mut().unwrap() ^= 1;
        fs::write(&snapshot, &file).unwrap();
        assert!(status(&snapshot, None)
            .unwrap_err()
            .contains("does not match"));
        fs::remove_dir_all(root).unwrap();
    }
}
