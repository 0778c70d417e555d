//! The encrypted tree file: every page sealed with AES-256-GCM on disk, while the tree reads a
//! plaintext image from memory exactly as it reads a plain file, so reads never decrypt.
//!
//! [`SealedFile`] is a [`PageFile`]: each page write is written twice, as plaintext into an
//! anonymous memory file (`memfd_create`) at the page's logical offset, and sealed into its
//! *slot* of the real file. `map` maps the memory file (shared, so every map sees later writes
//! as a map of a real file does); `sync_data` syncs the real file. Open decrypts every slot into
//! the memory file, so the plaintext of the whole tree lives in RAM (anonymous, swappable
//! memory) for as long as the tree is open.
//!
//! # Physical format (version 1)
//! ```text
//! 0     header copy A (2048 bytes)   the newer valid copy (by seq) is the header; a key id is
//! 2048  header copy B (2048 bytes)   added by rewriting the older copy and syncing
//! 4096  slot 0, slot 1, ...          slot i holds logical page i (bytes i*page_size..)
//!
//! header copy                              slot (page_size + 32 bytes)
//! 0   magic "BASALTEC"                     0          page ciphertext (page_size)
//! 8   format version u32 (1)               ps         key id u32 (0: never written)
//! 12  logical page size u32                ps+4       nonce (12, random per write)
//! 16  seq u64                              ps+16      tag (16)
//! 24  file id (16 random bytes)
//! 40  key count n u32
//! 44  n x (key id u32, key check 16)       associated data: file id ++ page id u64
//! ..  crc32c u32 of everything before      integers little-endian
//! ```
//! The header lists every key id a slot may be sealed with (the current key's id is added
//! before the first slot sealed with it is written) with its key check, so a wrong or missing
//! key is refused by name before any page is read. The associated data binds a slot to its page
//! and to this file (a new file id per file and per defragmentation), so a slot copied to another
//! page or file fails authentication. A slot that fails (a torn write after a crash, a flipped
//! bit) reads as a page of zeros, which the tree's own checksums refuse if anything reaches it;
//! [`SealedFile::failed_pages`] names them for `check`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::Mutex;

use memmap2::Mmap;

use super::file::{PageFile, StdFile};
use super::Error;
use crate::crypt::{self, Keyring, SharedKeyring, NONCE_BYTES, PLAINTEXT_KEY_ID, TAG_BYTES};

/// The first bytes of an encrypted tree file.
pub const MAGIC: &[u8; 8] = b"BASALTEC";
const VERSION: u32 = 1;
/// Bytes before slot 0.
pub const HEADER_BYTES: u64 = 4096;
const HEADER_COPY_BYTES: usize = 2048;
const FILE_ID_BYTES: usize = 16;
const KEY_ENTRY_BYTES: usize = 4 + TAG_BYTES;
const KEYS_AT: usize = 44;
/// Key ids one header can list; defragmentation drops all but the current one.
const KEYS_MAX: usize = (HEADER_COPY_BYTES - KEYS_AT - 4) / KEY_ENTRY_BYTES;
/// Bytes after each page's ciphertext in its slot.
pub const TRAILER_BYTES: usize = 4 + NONCE_BYTES + TAG_BYTES;
/// Slots decrypted per read at open.
const OPEN_CHUNK_BYTES: usize = 8 << 20;

/// Whether `first_bytes` (the start of a file) are an encrypted tree file's header.
pub fn is_sealed(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(MAGIC)
}

#[derive(Clone)]
struct Header {
    page_size: usize,
    seq: u64,
    file_id: [u8; FILE_ID_BYTES],
    keys: BTreeMap<u32, [u8; TAG_BYTES]>,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_COPY_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.page_size as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..40].copy_from_slice(&self.file_id);
        b[40..44].copy_from_slice(&(self.keys.len() as u32).to_le_bytes());
        let mut at = KEYS_AT;
        for (id, check) in &self.keys {
            b[at..at + 4].copy_from_slice(&id.to_le_bytes());
            b[at + 4..at + KEY_ENTRY_BYTES].copy_from_slice(check);
            at += KEY_ENTRY_BYTES;
        }
        let crc = crc32c::crc32c(&b[..at]);
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Header> {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        if !is_sealed(b) || u32_at(8) != VERSION {
            return None;
        }
        let count = u32_at(40) as usize;
        if count > KEYS_MAX {
            return None;
        }
        let end = KEYS_AT + count * KEY_ENTRY_BYTES;
        if u32_at(end) != crc32c::crc32c(&b[..end]) {
            return None;
        }
        let keys = (0..count)
            .map(|i| {
                let at = KEYS_AT + i * KEY_ENTRY_BYTES;
                let check = b[at + 4..at + KEY_ENTRY_BYTES].try_into().expect("a tag");
                (u32_at(at), check)
            })
            .collect();
        Some(Header {
            page_size: u32_at(12) as usize,
            seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            file_id: b[24..40].try_into().expect("16 bytes"),
            keys,
        })
    }

    /// Refuses a key file that lacks an id this file uses, or holds another key under it.
    fn verify(&self, keyring: &Keyring) -> Result<(), Error> {
        for (&id, check) in &self.keys {
            if !keyring.has(id) {
                return Err(Error::KeyMissing {
                    ids: self.keys.keys().copied().collect(),
                    missing: id,
                });
            }
            keyring
                .verify_key_check(id, check)
                .map_err(|_| Error::WrongKey { id })?;
        }
        Ok(())
    }
}

/// An encrypted tree file (see the module docs) over a physical file `inner`.
pub struct SealedFile {
    inner: Box<dyn PageFile>,
    image: StdFile,
    keyring: SharedKeyring,
    state: Mutex<State>,
}

struct State {
    header: Header,
    /// Logical pages whose slot failed authentication at open (and not rewritten since).
    failed: Vec<u64>,
    /// Slots per key id found at open.
    slot_keys: BTreeMap<u32, u64>,
}

impl SealedFile {
    /// Starts an encrypted tree file in `inner`, which must be empty.
    pub fn create(
        inner: Box<dyn PageFile>,
        keyring: SharedKeyring,
        page_size: usize,
    ) -> Result<SealedFile, Error> {
        assert_eq!(inner.len_bytes()?, 0, "a sealed file starts empty");
        let ring = keyring.load();
        let mut file_id = [0u8; FILE_ID_BYTES];
        file_id[..NONCE_BYTES].copy_from_slice(&ring.random_nonce().map_err(crypt_error)?);
        file_id[NONCE_BYTES..].copy_from_slice(&ring.random_nonce().map_err(crypt_error)?[..4]);
        let id = ring.current_id();
        let header = Header {
            page_size,
            seq: 1,
            file_id,
            keys: BTreeMap::from([(id, ring.key_check(id).map_err(crypt_error)?)]),
        };
        let mut both = header.encode();
        both.extend(
            Header {
                seq: 0,
                ..header.clone()
            }
            .encode(),
        );
        inner.write_at(&both, 0)?;
        drop(ring);
        Ok(SealedFile {
            inner,
            image: memory_file()?,
            keyring,
            state: Mutex::new(State {
                header,
                failed: Vec::new(),
                slot_keys: BTreeMap::new(),
            }),
        })
    }

    /// Opens an encrypted tree file: checks the keys, then decrypts every slot into memory.
    pub fn open(inner: Box<dyn PageFile>, keyring: SharedKeyring) -> Result<SealedFile, Error> {
        let header = read_header(inner.as_ref())?;
        let ring = keyring.load();
        header.verify(&ring)?;
        let ps = header.page_size;
        let slot_bytes = ps + TRAILER_BYTES;
        let slots = inner.len_bytes()?.saturating_sub(HEADER_BYTES) / slot_bytes as u64;
        let image = memory_file()?;
        image.set_len_bytes(slots * ps as u64)?;
        let chunk_slots = (OPEN_CHUNK_BYTES / slot_bytes).max(1) as u64;
        let mut buf = vec![0u8; chunk_slots as usize * slot_bytes];
        let mut plain = vec![0u8; chunk_slots as usize * ps];
        let (mut failed, mut slot_keys) = (Vec::new(), BTreeMap::new());
        let mut first = 0;
        while first < slots {
            let n = chunk_slots.min(slots - first);
            let buf = &mut buf[..n as usize * slot_bytes];
            inner.read_at(buf, HEADER_BYTES + first * slot_bytes as u64)?;
            let plain = &mut plain[..n as usize * ps];
            for (i, (slot, page)) in buf
                .chunks_exact_mut(slot_bytes)
                .zip(plain.chunks_exact_mut(ps))
                .enumerate()
            {
                let page_id = first + i as u64;
                let (text, trailer) = slot.split_at_mut(ps);
                let id = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
                if id == PLAINTEXT_KEY_ID && trailer.iter().all(|&b| b == 0) {
                    // Never written (the file grew past it): reads as zeros, as a plain file's
                    // hole does.
                    page.fill(0);
                    continue;
                }
                let opened = header.keys.contains_key(&id)
                    && open_slot(&ring, &header.file_id, page_id, text, trailer).is_ok();
                if opened {
                    page.copy_from_slice(text);
                    *slot_keys.entry(id).or_insert(0) += 1;
                } else {
                    page.fill(0);
                    failed.push(page_id);
                }
            }
            image.write_at(plain, first * ps as u64)?;
            first += n;
        }
        drop(ring);
        Ok(SealedFile {
            inner,
            image,
            keyring,
            state: Mutex::new(State {
                header,
                failed,
                slot_keys,
            }),
        })
    }

    pub fn page_size(&self) -> usize {
        self.state.lock().expect("sealed state").header.page_size
    }

    /// Pages whose slot failed authentication when the file was opened and that were not
    /// written since: damaged, torn by a crash, or moved.
    pub fn failed_pages(&self) -> Vec<u64> {
        self.state.lock().expect("sealed state").failed.clone()
    }

    /// How many slots each key id sealed, as found at open.
    pub fn slot_keys(&self) -> BTreeMap<u32, u64> {
        self.state.lock().expect("sealed state").slot_keys.clone()
    }

    /// The key ids the header lists (every id a slot may use).
    pub fn header_key_ids(&self) -> Vec<u32> {
        let state = self.state.lock().expect("sealed state");
        state.header.keys.keys().copied().collect()
    }

    /// The file offset of page `page`'s slot.
    pub fn slot_offset(&self, page: u64) -> u64 {
        HEADER_BYTES + page * (self.page_size() + TRAILER_BYTES) as u64
    }

    /// Seals `pages` (whole pages from logical page `first`) into slots, adding the current
    /// key id to the header first if it is new to this file.
    fn seal(&self, first: u64, pages: &[u8]) -> io::Result<Vec<u8>> {
        let ring = self.keyring.load();
        let id = ring.current_id();
        let mut state = self.state.lock().expect("sealed state");
        if !state.header.keys.contains_key(&id) {
            self.add_key(&mut state.header, &ring)?;
        }
        let ps = state.header.page_size;
        let mut out = Vec::with_capacity(pages.len() / ps * (ps + TRAILER_BYTES));
        for (i, page) in pages.chunks_exact(ps).enumerate() {
            let page_id = first + i as u64;
            let at = out.len();
            out.extend_from_slice(page);
            let nonce = ring.random_nonce().map_err(io::Error::other)?;
            let aad = aad(&state.header.file_id, page_id);
            let tag = ring
                .seal(id, nonce, &aad, &mut out[at..])
                .map_err(io::Error::other)?;
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&tag);
        }
        let last = first + (pages.len() / ps) as u64;
        state.failed.retain(|&p| p < first || p >= last);
        Ok(out)
    }

    /// Lists the keyring's current id in the header: the older copy is rewritten and synced
    /// before any slot sealed with the id is written, so the newest valid copy always names
    /// every id on disk.
    fn add_key(&self, header: &mut Header, ring: &Keyring) -> io::Result<()> {
        let id = ring.current_id();
        if header.keys.len() == KEYS_MAX {
            return Err(io::Error::other(format!(
                "the btree file lists {KEYS_MAX} key ids already; defragment it to drop old ones"
            )));
        }
        let check = ring.key_check(id).map_err(io::Error::other)?;
        let mut next = header.clone();
        next.seq += 1;
        next.keys.insert(id, check);
        let copy = next.seq % 2;
        self.inner
            .write_at(&next.encode(), copy * HEADER_COPY_BYTES as u64)?;
        self.inner.sync_data()?;
        *header = next;
        Ok(())
    }

    fn split(&self, offset: u64, len: usize) -> (u64, u64) {
        let ps = self.page_size() as u64;
        assert!(
            offset.is_multiple_of(ps) && (len as u64).is_multiple_of(ps),
            "sealed files take whole pages (offset {offset}, {len} bytes)"
        );
        let first = offset / ps;
        (first, HEADER_BYTES + first * (ps + TRAILER_BYTES as u64))
    }
}

impl PageFile for SealedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_vectored_at(&[buf], offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let pages = bufs.concat();
        let (first, physical) = self.split(offset, pages.len());
        let slots = self.seal(first, &pages)?;
        self.inner.write_at(&slots, physical)?;
        self.image.write_at(&pages, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        self.image.len_bytes()
    }
    fn set_len_bytes(&self, len_bytes: u64) -> io::Result<()> {
        let ps = self.page_size() as u64;
        let pages = len_bytes.div_ceil(ps);
        self.inner
            .set_len_bytes(HEADER_BYTES + pages * (ps + TRAILER_BYTES as u64))?;
        self.image.set_len_bytes(len_bytes)
    }
    fn map(&self, len_bytes: u64) -> io::Result<Mmap> {
        self.image.map(len_bytes)
    }
    fn is_sealed(&self) -> bool {
        true
    }
}

/// The valid header copy with the highest seq.
fn read_header(inner: &dyn PageFile) -> Result<Header, Error> {
    let mut b = vec![0u8; HEADER_BYTES as usize];
    inner.read_at(&mut b, 0)?;
    b.chunks_exact(HEADER_COPY_BYTES)
        .filter_map(Header::decode)
        .max_by_key(|h| h.seq)
        .ok_or(Error::Corrupt {
            page: 0,
            offset: 0,
            reason: "encrypted btree file header: neither copy is valid",
        })
}

/// The key ids an encrypted tree file's header lists (what a key file must hold to open it).
pub fn key_ids(inner: &dyn PageFile) -> Result<Vec<u32>, Error> {
    Ok(read_header(inner)?.keys.keys().copied().collect())
}

fn aad(file_id: &[u8; FILE_ID_BYTES], page: u64) -> [u8; FILE_ID_BYTES + 8] {
    let mut aad = [0u8; FILE_ID_BYTES + 8];
    aad[..FILE_ID_BYTES].copy_from_slice(file_id);
    aad[FILE_ID_BYTES..].copy_from_slice(&page.to_le_bytes());
    aad
}

fn open_slot(
    ring: &Keyring,
    file_id: &[u8; FILE_ID_BYTES],
    page: u64,
    text: &mut [u8],
    trailer: &[u8],
) -> Result<(), crypt::Error> {
    let id = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    let nonce = trailer[4..4 + NONCE_BYTES].try_into().expect("a nonce");
    let tag = trailer[4 + NONCE_BYTES..].try_into().expect("a tag");
    ring.open(id, nonce, &aad(file_id, page), text, tag)
}

fn crypt_error(e: crypt::Error) -> Error {
    Error::Io(io::Error::other(e))
}

/// An anonymous file in memory for the plaintext image.
fn memory_file() -> io::Result<StdFile> {
    // SAFETY: the name is a NUL-terminated literal; memfd_create only reads it.
    let fd = unsafe { libc::memfd_create(c"basalt-btree-plaintext".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    Ok(StdFile(unsafe { File::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::btree::{check, open, Options};

    const SECRET: &[u8] = b"distinctive-secret-value-7f3a";

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("btree-sealed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ring(keys: &[(u32, u8)]) -> SharedKeyring {
        let text: String = keys
            .iter()
            .map(|(id, byte)| format!("{id}:{}\n", format!("{byte:02x}").repeat(32)))
            .collect();
        Keyring::parse(text.as_bytes(), Path::new("keys"))
            .unwrap()
            .into_shared()
    }

    fn options(keyring: Option<&SharedKeyring>) -> Options {
        Options {
            page_size_bytes: 1024,
            verify_checksums: true,
            keyring: keyring.cloned(),
            ..Options::default()
        }
    }

    /// Writes `n` keys whose values carry [`SECRET`] (some long enough for overflow pages).
    fn fill(path: &Path, keyring: Option<&SharedKeyring>, n: u32) {
        let db = open(path, options(keyring)).unwrap();
        let mut txn = db.begin_write().unwrap();
        for i in 0..n {
            let mut value = SECRET.repeat(1 + (i % 7 == 0) as usize * 100);
            value.extend_from_slice(&i.to_be_bytes());
            txn.bucket("key")
                .unwrap()
                .insert(&[SECRET, &i.to_be_bytes()].concat(), &value)
                .unwrap();
        }
        txn.commit().unwrap();
        db.checkpoint(7).unwrap();
    }

    fn read_all(path: &Path, keyring: Option<&SharedKeyring>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = open(path, options(keyring)).unwrap();
        let read = db.begin_read().unwrap();
        let mut cursor = read.cursor("key");
        let mut out = Vec::new();
        let mut entry = cursor.first().unwrap();
        while let Some((k, v)) = entry {
            out.push((k.to_vec(), v.to_vec()));
            entry = cursor.next().unwrap();
        }
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn pages_round_trip_and_no_plaintext_reaches_the_file() {
        let dir = dir("round");
        let path = dir.join("db");
        let keys = ring(&[(3, 0x11)]);
        fill(&path, Some(&keys), 500);
        let bytes = std::fs::read(&path).unwrap();
        assert!(is_sealed(&bytes));
        assert!(!contains(&bytes, SECRET), "plaintext found in the file");
        let entries = read_all(&path, Some(&keys));
        assert_eq!(entries.len(), 500);
        assert!(entries
            .iter()
            .all(|(k, v)| contains(k, SECRET) && contains(v, SECRET)));
        let report = check(&path, Some(&keys)).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.buckets, vec![("key".to_string(), 500)]);
        assert_eq!(
            report
                .encrypted
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn a_missing_or_wrong_key_is_refused_by_name() {
        let dir = dir("keys");
        let path = dir.join("db");
        fill(&path, Some(&ring(&[(3, 0x11)])), 10);
        let missing = open(&path, options(None)).err().unwrap().to_string();
        assert!(
            missing.contains("encrypted (key ids [3])")
                && missing.contains("--encryption-key-file"),
            "{missing}"
        );
        assert!(matches!(check(&path, None), Err(Error::Encrypted { .. })));
        let wrong = open(&path, options(Some(&ring(&[(3, 0x22)]))))
            .err()
            .unwrap()
            .to_string();
        assert!(
            wrong.contains("wrong encryption key for key id 3"),
            "{wrong}"
        );
        let other_id = open(&path, options(Some(&ring(&[(4, 0x11)]))))
            .err()
            .unwrap()
            .to_string();
        assert!(other_id.contains("lacks key id 3"), "{other_id}");
    }

    #[test]
    fn a_flipped_bit_in_a_slot_is_reported_with_its_page_and_slot_offset() {
        let dir = dir("flip");
        let path = dir.join("db");
        let keys = ring(&[(1, 0x33)]);
        fill(&path, Some(&keys), 2000);
        let db = open(&path, options(Some(&keys))).unwrap();
        // A later checkpoint rewriting only the rightmost path leaves early leaves vouched for
        // by nothing but their own checks.
        let mut txn = db.begin_write().unwrap();
        txn.bucket("key").unwrap().insert(b"\xff", b"x").unwrap();
        txn.commit().unwrap();
        db.checkpoint(8).unwrap();
        drop(db);
        assert!(check(&path, Some(&keys)).unwrap().problems.is_empty());
        // An early leaf, which the second checkpoint did not rewrite.
        let page = 5;
        let slot_at = HEADER_BYTES + page * (1024 + TRAILER_BYTES) as u64;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[slot_at as usize + 300] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        let report = check(&path, Some(&keys)).unwrap();
        let problem = report
            .problems
            .iter()
            .find(|p| p.page == page)
            .unwrap_or_else(|| panic!("{:?}", report.problems));
        assert_eq!(problem.offset, slot_at);
        assert!(
            problem.reason.contains("authentication"),
            "{}",
            problem.reason
        );
        let db = open(&path, options(Some(&keys))).unwrap();
        let read = db.begin_read().unwrap();
        let mut cursor = read.cursor("key");
        let mut result = cursor.first().map(|e| e.is_some());
        while let Ok(true) = result {
            result = cursor.next().map(|e| e.is_some());
        }
        assert!(
            matches!(result, Err(Error::Corrupt { page: p, .. }) if p == page),
            "{result:?}"
        );
    }

    #[test]
    fn defragment_reseals_with_the_current_key_and_encrypts_a_plain_file() {
        let dir = dir("rotate");
        let path = dir.join("db");
        // A plain file opened with a keyring stays plain until defragmented.
        fill(&path, None, 300);
        let old = ring(&[(1, 0x44)]);
        let db = open(&path, options(Some(&old))).unwrap();
        drop(db);
        assert!(contains(&std::fs::read(&path).unwrap(), SECRET));
        let db = open(&path, options(Some(&old))).unwrap();
        assert!(!db.is_encrypted().unwrap());
        db.defragment(9).unwrap();
        assert!(db.is_encrypted().unwrap());
        drop(db);
        let bytes = std::fs::read(&path).unwrap();
        assert!(is_sealed(&bytes) && !contains(&bytes, SECRET));
        // Rotation: new writes use key 2, old pages keep key 1 until the defragmentation.
        let rotated = ring(&[(1, 0x44), (2, 0x55)]);
        let db = open(&path, options(Some(&rotated))).unwrap();
        let mut txn = db.begin_write().unwrap();
        txn.bucket("key")
            .unwrap()
            .insert(b"\x00new", SECRET)
            .unwrap();
        txn.commit().unwrap();
        db.checkpoint(10).unwrap();
        drop(db);
        let used = check(&path, Some(&rotated)).unwrap().encrypted.unwrap();
        assert_eq!(used.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        let db = open(&path, options(Some(&rotated))).unwrap();
        db.defragment(11).unwrap();
        drop(db);
        let only_new = ring(&[(2, 0x55)]);
        let report = check(&path, Some(&only_new)).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(
            report
                .encrypted
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(read_all(&path, Some(&only_new)).len(), 301);
        assert!(!contains(&std::fs::read(&path).unwrap(), SECRET));
    }

    #[test]
    fn a_slot_copied_to_another_page_fails_authentication() {
        let dir = dir("moved");
        let path = dir.join("db");
        let keys = ring(&[(1, 0x66)]);
        fill(&path, Some(&keys), 50);
        let slot = 1024 + TRAILER_BYTES;
        let mut bytes = std::fs::read(&path).unwrap();
        // Meta slot 1 over meta slot 0: both are whole, valid slots, but of another page.
        let (head, rest) = bytes.split_at_mut(HEADER_BYTES as usize + slot);
        head[HEADER_BYTES as usize..].copy_from_slice(&rest[..slot]);
        std::fs::write(&path, &bytes).unwrap();
        let file = StdFile(File::open(&path).unwrap());
        let sealed = SealedFile::open(Box::new(file), keys).unwrap();
        assert_eq!(sealed.failed_pages(), vec![0]);
    }
}
