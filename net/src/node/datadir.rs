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

/// Creates a new data directory, or checks that an existing one is ours and of this format.
pub fn prepare(data_dir: &Path) -> Result<(), NodeError> {
    let member = member_dir(data_dir);
    let marker = member.join(FORMAT_FILE);
    if member.exists() {
        let found = fs::read_to_string(&marker).map_err(|e| {
            refuse(
                data_dir,
                format!(
                    "{} is unreadable ({e}): this is not a Basalt data dir (an etcd data dir \
                     must be brought over with `etcdctl snapshot save` and `basalt snapshot \
                     restore`)",
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
    } else {
        fs::create_dir_all(&member).map_err(|e| refuse(data_dir, e.to_string()))?;
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

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Where a member that joined a running cluster keeps the ids it was given, so that it restarts
/// as itself even when no peer answers: `<member id hex> <cluster id hex>\n`.
const IDENTITY_FILE: &str = "basalt-joined";

/// The member and cluster ids a joining member was given, if it joined before.
pub fn joined_identity(data_dir: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(member_dir(data_dir).join(IDENTITY_FILE)).ok()?;
    let (member, cluster) = text.trim_end().split_once(' ')?;
    Some((
        u64::from_str_radix(member, 16).ok()?,
        u64::from_str_radix(cluster, 16).ok()?,
    ))
}

/// Records the ids a joining member was given (synced before it starts).
pub fn remember_identity(data_dir: &Path, member_id: u64, cluster_id: u64) -> std::io::Result<()> {
    let member = member_dir(data_dir);
    fs::create_dir_all(&member)?;
    let path = member.join(IDENTITY_FILE);
    let mut file = fs::File::create(&path)?;
    file.write_all(format!("{member_id:x} {cluster_id:x}\n").as_bytes())?;
    file.sync_all()?;
    fs::File::open(&member)?.sync_all()
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
