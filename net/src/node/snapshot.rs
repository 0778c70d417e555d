//! Snapshot files, as etcd's Maintenance.Snapshot streams them and `etcdutl snapshot` reads
//! them: a consistent copy of the B+tree file, followed by the sha256 of that copy.
//!
//! ```text
//! | B+tree file (engine::btree format, carrying the applied index) | sha256 of it: 32 bytes |
//! ```
//!
//! The copy is built from a read snapshot (a fixed root) on a thread of its own, so writes go on
//! while it is made. `restore` turns a snapshot file into a new data directory; the member that
//! starts on it begins its log at the snapshot's applied index.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use basalt_engine::btree::{self, ReadTxn};
use basalt_engine::mvcc::{read_consistent_index, BtreeBackend, KvStore};
use sha2::{Digest, Sha256};

use super::datadir;

/// Bytes of the sha256 trailer.
pub const SHA256_BYTES: usize = 32;

/// Writes the state `read` shows into a new, compact, durable tree file at `path`.
pub fn copy_tree(read: &ReadTxn, path: &Path) -> Result<(), String> {
    let _ = fs::remove_file(path);
    let applied_index = read_consistent_index(read).map_err(|e| e.to_string())?;
    let db = btree::open(path, btree::Options::default()).map_err(|e| e.to_string())?;
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

/// The sha256 of a file's bytes.
pub fn sha256_of(path: &Path) -> Result<[u8; SHA256_BYTES], String> {
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Checks a snapshot file's trailer and copies its tree to `to`.
fn verified_tree(snapshot: &Path, to: &Path) -> Result<(), String> {
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
    fs::write(to, tree).map_err(|e| format!("{}: {e}", to.display()))?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())
}

/// What `basalt snapshot status` prints (etcdutl's columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size_bytes: u64,
}

/// Reads a snapshot file: checks it and reports its revision, live key count and size.
pub fn status(snapshot: &Path) -> Result<SnapshotStatus, String> {
    let scratch = scratch_path(snapshot);
    verified_tree(snapshot, &scratch)?;
    let result = (|| {
        let total_size_bytes = fs::metadata(&scratch).map_err(|e| e.to_string())?.len();
        let db = btree::open(&scratch, btree::Options::default()).map_err(|e| e.to_string())?;
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
    })();
    let _ = fs::remove_file(&scratch);
    result
}

/// Builds a new data directory from a snapshot file (what `etcdutl snapshot restore` does).
pub fn restore(snapshot: &Path, data_dir: &Path) -> Result<(), String> {
    if datadir::member_dir(data_dir).exists() {
        return Err(format!("data dir {} already exists", data_dir.display()));
    }
    datadir::prepare(data_dir).map_err(|e| e.to_string())?;
    verified_tree(snapshot, &datadir::db_path(data_dir))?;
    let db = btree::open(datadir::db_path(data_dir), btree::Options::default())
        .map_err(|e| e.to_string())?;
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let applied = read_consistent_index(&read).map_err(|e| e.to_string())?;
    let durable = db.durable_applied_index().map_err(|e| e.to_string())?;
    if applied != durable {
        return Err(format!(
            "snapshot tree holds index {applied} but its checkpoint says {durable}"
        ));
    }
    Ok(())
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
        copy_tree(&source.begin_read().unwrap(), &copy).unwrap();
        let mut file = fs::read(&copy).unwrap();
        file.extend_from_slice(&sha256_of(&copy).unwrap());
        let snapshot = root.join("snap.db");
        fs::write(&snapshot, &file).unwrap();

        let got = status(&snapshot).unwrap();
        assert_eq!(
            (got.revision, got.total_keys),
            (2, 2),
            "one record + the consistent index"
        );
        restore(&snapshot, &root.join("restored")).unwrap();
        assert!(
            restore(&snapshot, &root.join("restored")).is_err(),
            "never overwrites"
        );

        *file.last_mut().unwrap() ^= 1;
        fs::write(&snapshot, &file).unwrap();
        assert!(status(&snapshot).unwrap_err().contains("does not match"));
        fs::remove_dir_all(root).unwrap();
    }
}
