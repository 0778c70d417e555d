//! The backup's lease listing: an event names the lease a key is attached to, but no event
//! carries a lease's grant or TTL, so the backup lists the server's leases every
//! `--lease-list-interval` (10 s by default) and records each new lease's granted TTL (a lease
//! granted, used and revoked within one interval is never seen); restore grants a lease that a
//! replayed put names (and its snapshot lacks) with that TTL.
//!
//! ```text
//! leases.log | magic "BASALTLS" | version u32 LE (1) | reserved u32 (0) | record | record | ...
//! record     | lease id i64 LE | granted TTL s i64 LE | listed_unix_ms u64 LE | crc32c u32 LE of the 24 bytes before |
//! ```
//!
//! Appended and fdatasync'd after each listing that found new leases; a reader keeps the
//! records up to the first one that does not check out (a torn tail after a crash), and the
//! backup cuts that tail off when it resumes.

use super::segment::{file_header, has_header, FlushError, HEADER_BYTES};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "leases.log";
const MAGIC: &[u8; 8] = b"BASALTLS";
const VERSION: u32 = 1;
const RECORD_BYTES: usize = 28;

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Every lease's recorded TTL in `dir`, and where the readable records end.
fn read_with_end(dir: &Path) -> Result<(HashMap<i64, i64>, u64), String> {
    let path = path(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((HashMap::new(), 0)),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !has_header(&bytes, MAGIC, VERSION) {
        return Ok((HashMap::new(), 0));
    }
    let mut ttls = HashMap::new();
    let mut end = HEADER_BYTES;
    for record in bytes[HEADER_BYTES..].chunks_exact(RECORD_BYTES) {
        let crc = u32::from_le_bytes(record[24..28].try_into().expect("4 bytes"));
        if crc32c::crc32c(&record[..24]) != crc {
            break;
        }
        let id = i64::from_le_bytes(record[0..8].try_into().expect("8 bytes"));
        let ttl = i64::from_le_bytes(record[8..16].try_into().expect("8 bytes"));
        ttls.insert(id, ttl);
        end += RECORD_BYTES;
    }
    Ok((ttls, end as u64))
}

/// Every lease's recorded TTL (seconds) in `dir`.
pub fn read(dir: &Path) -> Result<HashMap<i64, i64>, String> {
    Ok(read_with_end(dir)?.0)
}

/// The backup's side: the leases recorded so far and the file to append to.
pub struct LeaseLog {
    path: PathBuf,
    file: File,
    known: HashMap<i64, i64>,
}

impl LeaseLog {
    /// Opens (or creates) `dir`'s lease log, cutting off a torn tail.
    pub fn open(dir: &Path) -> Result<LeaseLog, String> {
        let (known, end) = read_with_end(dir)?;
        let path = path(dir);
        let at = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(at)?;
        if end == 0 {
            file.set_len(0).map_err(at)?;
            file.write_all(&file_header(MAGIC, VERSION)).map_err(at)?;
        } else {
            file.set_len(end).map_err(at)?;
        }
        file.sync_all().map_err(at)?;
        Ok(LeaseLog { path, file, known })
    }

    pub fn knows(&self, id: i64) -> bool {
        self.known.contains_key(&id)
    }

    /// Records new leases and makes them durable. A full device leaves the log as it was (a
    /// record cut short would hide every later one from the reader) and the leases unknown, so
    /// the next listing records them.
    pub fn record(&mut self, leases: &[(i64, i64)], listed_ms: u64) -> Result<(), FlushError> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(leases.len() * RECORD_BYTES);
        for &(id, ttl) in leases {
            let start = bytes.len();
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&ttl.to_le_bytes());
            bytes.extend_from_slice(&listed_ms.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[start..]);
            bytes.extend_from_slice(&crc.to_le_bytes());
        }
        let at = self.path.display().to_string();
        let failed = |e: std::io::Error| FlushError::Failed(format!("{at}: {e}"));
        let len = self.file.metadata().map_err(failed)?.len();
        if let Err(e) = self.file.write_all(&bytes) {
            self.file.set_len(len).map_err(failed)?;
            return Err(FlushError::from_io(at, e));
        }
        self.file.sync_data().map_err(failed)?;
        self.known.extend(leases.iter().copied());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_ttls_survive_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("basalt-leases-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut log = LeaseLog::open(&dir).unwrap();
        log.record(&[(7, 30), (8, 600)], 1).unwrap();
        log.record(&[(9, 5)], 2).unwrap();
        assert!(log.knows(8) && !log.knows(10));
        // A crash in the middle of the last record.
        let file = path(&dir);
        let len = fs::metadata(&file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert_eq!(read(&dir).unwrap(), HashMap::from([(7, 30), (8, 600)]));
        let mut log = LeaseLog::open(&dir).unwrap();
        assert!(!log.knows(9));
        log.record(&[(9, 5)], 3).unwrap();
        assert_eq!(read(&dir).unwrap().get(&9), Some(&5));
        fs::remove_dir_all(dir).unwrap();
    }
}
