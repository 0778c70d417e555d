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
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use super::file::{PageFile, StdFile};
use super::{page, Error};
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
    /// A new file's header: a fresh file id, the keyring's current key listed.
    fn new(ring: &Keyring, page_size: usize) -> Result<Header, Error> {
        let mut file_id = [0u8; FILE_ID_BYTES];
        file_id[..NONCE_BYTES].copy_from_slice(&ring.random_nonce().map_err(crypt_error)?);
        file_id[NONCE_BYTES..].copy_from_slice(&ring.random_nonce().map_err(crypt_error)?[..4]);
        let id = ring.current_id();
        Ok(Header {
            page_size,
            seq: 1,
            file_id,
            keys: BTreeMap::from([(id, ring.key_check(id).map_err(crypt_error)?)]),
        })
    }

    /// Both copies of a new file's header (the second one older), [`HEADER_BYTES`] in all.
    fn encode_both(&self) -> Vec<u8> {
        let mut both = self.encode();
        both.extend(
            Header {
                seq: self.seq - 1,
                ..self.clone()
            }
            .encode(),
        );
        both
    }

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
        let header = Header::new(&keyring.load(), page_size)?;
        inner.write_at(&header.encode_both(), 0)?;
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
            open_slots(
                &ring,
                &header,
                first,
                buf,
                plain,
                |page_id, slot| match slot {
                    Slot::Unwritten => {}
                    Slot::Opened(id) => *slot_keys.entry(id).or_insert(0) += 1,
                    Slot::Failed => failed.push(page_id),
                },
            );
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
        let out = seal_slots(&ring, &state.header, first, pages)?;
        let last = first + (pages.len() / state.header.page_size) as u64;
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

/// Seals the pages of a new encrypted file written once, front to back or page by page (a
/// tree received from a peer, a snapshot's copy): the same format as [`SealedFile`], sealed
/// with the key current when it was made, without a plaintext image.
pub struct SlotSealer {
    header: Header,
    ring: Arc<Keyring>,
}

impl SlotSealer {
    pub fn new(keyring: &SharedKeyring, page_size: usize) -> Result<SlotSealer, Error> {
        let ring = keyring.load_full();
        Ok(SlotSealer {
            header: Header::new(&ring, page_size)?,
            ring,
        })
    }

    pub fn page_size(&self) -> usize {
        self.header.page_size
    }

    /// The file's first [`HEADER_BYTES`].
    pub fn header_bytes(&self) -> Vec<u8> {
        self.header.encode_both()
    }

    /// Where logical byte `offset` (a page boundary) is sealed in the file.
    pub fn physical_offset(&self, offset: u64) -> u64 {
        let ps = self.header.page_size as u64;
        debug_assert!(offset.is_multiple_of(ps));
        HEADER_BYTES + offset / ps * (ps + TRAILER_BYTES as u64)
    }

    /// `pages` (whole pages from logical byte `offset`) as the slots to write at
    /// [`SlotSealer::physical_offset`].
    pub fn seal(&self, offset: u64, pages: &[u8]) -> io::Result<Vec<u8>> {
        let ps = self.header.page_size;
        assert!(
            offset.is_multiple_of(ps as u64) && pages.len().is_multiple_of(ps),
            "sealed files take whole pages (offset {offset}, {} bytes)",
            pages.len()
        );
        seal_slots(&self.ring, &self.header, offset / ps as u64, pages)
    }
}

/// Opens the slots of an encrypted file read once, front to back, to hand its plaintext on (a
/// tree sent to a peer, a snapshot streamed to a client) without decrypting it all into memory.
/// A slot that fails authentication is an error naming its page, never zeros.
pub struct SlotOpener {
    header: Header,
    ring: Arc<Keyring>,
}

impl SlotOpener {
    /// `header` is the file's first [`HEADER_BYTES`]; the keyring must hold every key it lists.
    pub fn new(header: &[u8], keyring: &SharedKeyring) -> Result<SlotOpener, Error> {
        let header = decode_header(header)?;
        let ring = keyring.load_full();
        header.verify(&ring)?;
        Ok(SlotOpener { header, ring })
    }

    pub fn page_size(&self) -> usize {
        self.header.page_size
    }

    /// Bytes of one page's slot.
    pub fn slot_bytes(&self) -> usize {
        self.header.page_size + TRAILER_BYTES
    }

    /// The plaintext length of a file of `physical_len` bytes.
    pub fn plain_len(&self, physical_len: u64) -> u64 {
        physical_len.saturating_sub(HEADER_BYTES) / self.slot_bytes() as u64
            * self.header.page_size as u64
    }

    /// The file offset of page `page`'s slot.
    pub fn slot_offset(&self, page: u64) -> u64 {
        HEADER_BYTES + page * self.slot_bytes() as u64
    }

    /// The pages sealed in `slots` (whole slots, from page `first`).
    pub fn open(&self, first: u64, slots: &mut [u8]) -> Result<Vec<u8>, Error> {
        let count = slots.len() / self.slot_bytes();
        let mut plain = vec![0u8; count * self.header.page_size];
        let mut failed = None;
        open_slots(
            &self.ring,
            &self.header,
            first,
            slots,
            &mut plain,
            |page, slot| {
                if matches!(slot, Slot::Failed) && failed.is_none() {
                    failed = Some(page);
                }
            },
        );
        match failed {
            Some(page) => Err(Error::Corrupt {
                page,
                offset: self.slot_offset(page),
                reason: "encrypted page failed decryption/authentication (damaged or moved)",
            }),
            None => Ok(plain),
        }
    }
}

/// A new encrypted file at `path` written by pages (at any page boundary, in any order) with
/// [`SlotSealer`]: e.g. etcd's bbolt snapshot built in a data dir that must hold no plaintext.
pub struct SealedWriter {
    file: File,
    sealer: SlotSealer,
}

impl SealedWriter {
    /// Creates `path` (which must not exist).
    pub fn create(
        path: &Path,
        keyring: &SharedKeyring,
        page_size: usize,
    ) -> Result<SealedWriter, Error> {
        let sealer = SlotSealer::new(keyring, page_size)?;
        let file = File::options().write(true).create_new(true).open(path)?;
        file.write_all_at(&sealer.header_bytes(), 0)?;
        Ok(SealedWriter { file, sealer })
    }

    /// Writes whole pages at logical byte `offset`.
    pub fn write_at(&self, pages: &[u8], offset: u64) -> io::Result<()> {
        let slots = self.sealer.seal(offset, pages)?;
        self.file
            .write_all_at(&slots, self.sealer.physical_offset(offset))
    }

    /// Makes the plaintext `len_bytes` long (a page boundary).
    pub fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.file.set_len(self.sealer.physical_offset(len_bytes))
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// Reads the plaintext of a file front to back: an encrypted file's pages opened slot by slot,
/// a plain file as it is (a snapshot copy is either, by whether the member has keys).
pub struct PlainReader {
    file: File,
    opener: Option<SlotOpener>,
    len: u64,
    at: u64,
}

impl PlainReader {
    /// Opens `path`; an encrypted file needs the keys it lists.
    pub fn open(path: &Path, keyring: Option<&SharedKeyring>) -> Result<PlainReader, Error> {
        let file = File::open(path)?;
        let physical_len = file.metadata()?.len();
        let mut head = vec![0u8; HEADER_BYTES.min(physical_len) as usize];
        file.read_exact_at(&mut head, 0)?;
        let opener = match keyring {
            _ if !is_sealed(&head) => None,
            Some(keyring) => Some(SlotOpener::new(&head, keyring)?),
            None => {
                return Err(Error::Encrypted {
                    ids: decode_header(&head)?.keys.keys().copied().collect(),
                })
            }
        };
        let len = opener
            .as_ref()
            .map_or(physical_len, |o| o.plain_len(physical_len));
        Ok(PlainReader {
            file,
            opener,
            len,
            at: 0,
        })
    }

    /// The plaintext's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next plaintext bytes, at most about `want` (whole pages of an encrypted file);
    /// empty at the end.
    pub fn read_chunk(&mut self, want: usize) -> Result<Vec<u8>, Error> {
        let left = self.len - self.at;
        let chunk = match &self.opener {
            None => {
                let mut chunk = vec![0u8; left.min(want as u64) as usize];
                self.file.read_exact_at(&mut chunk, self.at)?;
                chunk
            }
            Some(opener) => {
                let ps = opener.page_size() as u64;
                let pages = (want as u64 / ps).max(1).min(left / ps);
                let first = self.at / ps;
                let mut slots = vec![0u8; pages as usize * opener.slot_bytes()];
                self.file
                    .read_exact_at(&mut slots, opener.slot_offset(first))?;
                opener.open(first, &mut slots)?
            }
        };
        self.at += chunk.len() as u64;
        Ok(chunk)
    }
}

/// The valid header copy with the highest seq.
fn read_header(inner: &dyn PageFile) -> Result<Header, Error> {
    let mut b = vec![0u8; HEADER_BYTES as usize];
    inner.read_at(&mut b, 0)?;
    decode_header(&b)
}

/// The valid copy with the highest seq among a file's first bytes.
fn decode_header(b: &[u8]) -> Result<Header, Error> {
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

/// `pages` (whole pages from logical page `first`) sealed into slots with the current key,
/// which `header` must list.
fn seal_slots(ring: &Keyring, header: &Header, first: u64, pages: &[u8]) -> io::Result<Vec<u8>> {
    let id = ring.current_id();
    let ps = header.page_size;
    debug_assert!(header.keys.contains_key(&id));
    let mut out = Vec::with_capacity(pages.len() / ps * (ps + TRAILER_BYTES));
    for (i, page) in pages.chunks_exact(ps).enumerate() {
        let at = out.len();
        out.extend_from_slice(page);
        let nonce = ring.random_nonce().map_err(io::Error::other)?;
        let aad = aad(&header.file_id, first + i as u64);
        let tag = ring
            .seal(id, nonce, &aad, &mut out[at..])
            .map_err(io::Error::other)?;
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&tag);
    }
    Ok(out)
}

/// What one slot held.
enum Slot {
    /// Never written (the file grew past it): reads as zeros, as a plain file's hole does.
    Unwritten,
    /// Opened with this key id.
    Opened(u32),
    /// Failed authentication (or names a key id the header does not list): reads as
    /// [`page::SEALED_PAGE_FAILED`], which the tree's checks name as such.
    Failed,
}

/// Opens the whole slots in `slots` (from logical page `first`) into the pages of `plain`,
/// telling `seen` what each slot held.
fn open_slots(
    ring: &Keyring,
    header: &Header,
    first: u64,
    slots: &mut [u8],
    plain: &mut [u8],
    mut seen: impl FnMut(u64, Slot),
) {
    let ps = header.page_size;
    for (i, (slot, page)) in slots
        .chunks_exact_mut(ps + TRAILER_BYTES)
        .zip(plain.chunks_exact_mut(ps))
        .enumerate()
    {
        let page_id = first + i as u64;
        let (text, trailer) = slot.split_at_mut(ps);
        let id = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        if id == PLAINTEXT_KEY_ID && trailer.iter().all(|&b| b == 0) {
            page.fill(0);
            seen(page_id, Slot::Unwritten);
            continue;
        }
        let opened = header.keys.contains_key(&id)
            && open_slot(ring, &header.file_id, page_id, text, trailer).is_ok();
        if opened {
            page.copy_from_slice(text);
            seen(page_id, Slot::Opened(id));
        } else {
            page.fill(0);
            page[..page::SEALED_PAGE_FAILED.len()].copy_from_slice(page::SEALED_PAGE_FAILED);
            seen(page_id, Slot::Failed);
        }
    }
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

    /// The key ids a check found sealing the file's slots.
    fn ids_in_use(report: &crate::btree::CheckReport) -> Vec<u32> {
        let used = report.encrypted.as_ref().expect("an encrypted file");
        used.keys().copied().collect()
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
        assert_eq!(ids_in_use(&report), vec![3]);
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
            problem
                .reason
                .starts_with("encrypted page failed decryption/authentication"),
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
        let said = result.unwrap_err().to_string();
        assert!(
            said.contains(&format!("corrupt at page {page}"))
                && said.contains("encrypted page failed decryption/authentication"),
            "{said}"
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
        let used = check(&path, Some(&rotated)).unwrap();
        assert_eq!(ids_in_use(&used), vec![1, 2]);
        let db = open(&path, options(Some(&rotated))).unwrap();
        db.defragment(11).unwrap();
        drop(db);
        let only_new = ring(&[(2, 0x55)]);
        let report = check(&path, Some(&only_new)).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(ids_in_use(&report), vec![2]);
        assert_eq!(read_all(&path, Some(&only_new)).len(), 301);
        assert!(!contains(&std::fs::read(&path).unwrap(), SECRET));
    }

    #[test]
    fn a_tree_written_once_through_the_slot_sealer_opens_as_the_tree_and_reads_back_plain() {
        let dir = dir("writer");
        let plain_path = dir.join("plain");
        fill(&plain_path, None, 300);
        let plain = std::fs::read(&plain_path).unwrap();
        assert!(contains(&plain, SECRET));
        let keys = ring(&[(5, 0x77)]);
        // In pieces and out of order, as a bbolt writer or a transfer writes them.
        let sealed_path = dir.join("sealed");
        let writer = SealedWriter::create(&sealed_path, &keys, 1024).unwrap();
        let (head, tail) = plain.split_at(3 * 1024);
        writer.write_at(tail, head.len() as u64).unwrap();
        writer.write_at(head, 0).unwrap();
        writer.set_len(plain.len() as u64).unwrap();
        writer.sync().unwrap();
        drop(writer);
        let bytes = std::fs::read(&sealed_path).unwrap();
        assert!(is_sealed(&bytes) && !contains(&bytes, SECRET));
        assert_eq!(
            read_all(&sealed_path, Some(&keys)),
            read_all(&plain_path, None)
        );

        let mut reader = PlainReader::open(&sealed_path, Some(&keys)).unwrap();
        assert_eq!(reader.len(), plain.len() as u64);
        let mut back = Vec::new();
        loop {
            let chunk = reader.read_chunk(5000).unwrap();
            if chunk.is_empty() {
                break;
            }
            back.extend(chunk);
        }
        assert_eq!(back, plain);
        let refused = PlainReader::open(&sealed_path, None).err().unwrap();
        assert!(
            matches!(refused, Error::Encrypted { ref ids } if ids == &[5]),
            "{refused}"
        );
        let wrong = PlainReader::open(&sealed_path, Some(&ring(&[(5, 0x78)])));
        assert!(matches!(wrong, Err(Error::WrongKey { id: 5 })));

        // A flipped bit is an error naming the page and its slot, never zeros handed on.
        let mut damaged = bytes.clone();
        let slot_at = HEADER_BYTES as usize + 4 * (1024 + TRAILER_BYTES);
        damaged[slot_at + 10] ^= 1;
        std::fs::write(&sealed_path, &damaged).unwrap();
        let mut reader = PlainReader::open(&sealed_path, Some(&keys)).unwrap();
        let error = loop {
            match reader.read_chunk(1024) {
                Ok(chunk) => assert!(!chunk.is_empty(), "read past a damaged page"),
                Err(error) => break error,
            }
        };
        assert!(
            matches!(error, Error::Corrupt { page: 4, offset, .. } if offset == slot_at as u64),
            "{error}"
        );
        assert!(error.to_string().contains("authentication"), "{error}");
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
