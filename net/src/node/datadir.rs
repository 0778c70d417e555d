//! The data directory's layout and format marker, laid out as etcd lays out its own so that
//! operators find things where they expect them:
//!
//! ```text
//! <data-dir>/member/basalt-format   "basalt data dir format 1\n" (written once, synced)
//! <data-dir>/member/wal/            WAL segments (engine::wal)
//! <data-dir>/member/snap/db         the B+tree file (engine::btree)
//! ```
//!
//! A `member/` without the marker (an etcd data dir, or another program's) or with another
//! format number is refused before anything in it is opened or changed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::NodeError;
use basalt_engine::crypt::SharedKeyring;

const FORMAT_FILE: &str = "basalt-format";
const FORMAT_LINE: &str = "basalt data dir format 1\n";

pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("snap").join("db")
}

fn refuse(path: &Path, reason: impl Into<String>) -> NodeError {
    NodeError::DataDir {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether `data_dir` holds a Basalt member (its format marker), whatever its format number.
pub fn holds_basalt_marker(data_dir: &Path) -> bool {
    member_dir(data_dir).join(FORMAT_FILE).exists()
}

/// Checks that an existing `member/` is ours and of this format, changing nothing; `false` when
/// there is no `member/` yet.
fn check_format(data_dir: &Path) -> Result<bool, NodeError> {
    let member = member_dir(data_dir);
    if !member.exists() {
        return Ok(false);
    }
    let marker = member.join(FORMAT_FILE);
    let found = fs::read_to_string(&marker).map_err(|e| {
        refuse(
            data_dir,
            format!(
                "{} is unreadable ({e}): this is not a Basalt data dir (a stopped etcd \
                 member's data dir is brought over with `basalt migrate \
                 --from-etcd-data-dir`, a running one's with `etcdctl snapshot save` and \
                 `basalt snapshot restore`)",
                marker.display()
            ),
        )
    })?;
    if found != FORMAT_LINE {
        return Err(refuse(
            data_dir,
            format!(
                "{} says {:?}; this Basalt reads only {:?}",
                marker.display(),
                found.trim_end(),
                FORMAT_LINE.trim_end()
            ),
        ));
    }
    Ok(true)
}

/// Creates a new data directory, or checks that an existing one is ours and of this format.
pub fn prepare(data_dir: &Path) -> Result<(), NodeError> {
    let member = member_dir(data_dir);
    if !check_format(data_dir)? {
        fs::create_dir_all(&member).map_err(|e| refuse(data_dir, e.to_string()))?;
        let marker = member.join(FORMAT_FILE);
        let mut file = fs::File::create(&marker).map_err(|e| refuse(data_dir, e.to_string()))?;
        file.write_all(FORMAT_LINE.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| refuse(data_dir, e.to_string()))?;
    }
    for dir in [member.join("wal"), member.join("snap")] {
        fs::create_dir_all(&dir).map_err(|e| refuse(data_dir, e.to_string()))?;
    }
    sync_dir(&member).map_err(|e| refuse(data_dir, e.to_string()))
}

/// The member a data dir holds: its WAL names it (etcd's rule: a dir with a WAL restarts as
/// the member it holds, whatever the bootstrap flags say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberDir {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The member joined a running cluster and has received nothing yet (no entry, no
    /// snapshot, an empty tree): it must learn its peers from the cluster again.
    pub awaits_first_snapshot: bool,
}

/// Whether `data_dir` already holds a member, read without writing anything: `None` for a
/// dir to bootstrap or join with (no `member/`, or a WAL that never got its metadata record, as
/// a crash during the first start leaves it).
/// A sealed WAL and an encrypted tree file are read with `keyring` (refused without it).
pub fn existing_member(
    data_dir: &Path,
    keyring: Option<&SharedKeyring>,
) -> Result<Option<MemberDir>, NodeError> {
    if !check_format(data_dir)? {
        return Ok(None);
    }
    let wal = basalt_engine::wal::wal_dir(data_dir);
    let keys_now = keyring.map(|k| k.load_full());
    let log = basalt_engine::wal::dump::summarize_log(data_dir, keys_now.as_deref())?;
    let Some(metadata) = log.metadata else {
        return Ok(None);
    };
    let (member_id, cluster_id) = super::codec::decode_metadata(&metadata)
        .map_err(|e| refuse(&wal, format!("the WAL's metadata record: {e}")))?;
    let received_nothing = !log.has_entries && log.snapshot_index.is_none();
    let awaits_first_snapshot = received_nothing && tree_applied_index(data_dir, keyring)? == 0;
    Ok(Some(MemberDir {
        member_id,
        cluster_id,
        awaits_first_snapshot,
    }))
}

/// The applied index of the tree's newest checkpoint (0 without a tree file).
fn tree_applied_index(data_dir: &Path, keyring: Option<&SharedKeyring>) -> Result<u64, NodeError> {
    let db = db_path(data_dir);
    if !db.exists() {
        return Ok(0);
    }
    basalt_engine::btree::check(&db, keyring)
        .map(|report| report.applied_index)
        .map_err(|e| refuse(&db, e.to_string()))
}

/// Older Basalt recorded a joining member's ids in this file and wrote it on every start with
/// `--initial-cluster-state existing`, even beside a member's own log; the WAL's metadata
/// record is what names the member, so the file is only removed when found.
const STRAY_JOINED_FILE: &str = "basalt-joined";

/// Removes the file an older start left (see [`STRAY_JOINED_FILE`]), saying so.
pub fn remove_stray_joined_marker(data_dir: &Path) -> Result<(), NodeError> {
    let path = member_dir(data_dir).join(STRAY_JOINED_FILE);
    if !path.exists() {
        return Ok(());
    }
    fs::remove_file(&path).map_err(|e| refuse(&path, e.to_string()))?;
    sync_dir(&member_dir(data_dir)).map_err(|e| refuse(data_dir, e.to_string()))?;
    eprintln!(
        "basalt: removed {} left by an older start with --initial-cluster-state existing \
         (the WAL names this member)",
        path.display()
    );
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_is_marked_and_foreign_or_newer_dirs_are_refused() {
        let root = std::env::temp_dir().join(format!("basalt-datadir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let ours = root.join("ours");
        prepare(&ours).unwrap();
        prepare(&ours).expect("a dir we made opens again");

        let etcd = root.join("etcd");
        fs::create_dir_all(etcd.join("member/snap")).unwrap();
        let error = prepare(&etcd).unwrap_err().to_string();
        assert!(error.contains("not a Basalt data dir"), "{error}");

        let newer = root.join("newer");
        fs::create_dir_all(newer.join("member")).unwrap();
        fs::write(
            newer.join("member").join(FORMAT_FILE),
            "basalt data dir format 2\n",
        )
        .unwrap();
        let error = prepare(&newer).unwrap_err().to_string();
        assert!(error.contains("reads only"), "{error}");
        fs::remove_dir_all(root).unwrap();
    }
}
