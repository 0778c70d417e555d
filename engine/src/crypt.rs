//! Keys for encryption at rest: the key file, and AES-256-GCM sealing of one block at a time.
//!
//! Owns: parsing and permission-checking `--encryption-key-file`, the key ids that every
//! encrypted block names, and the seal/open primitives the WAL, the tree file and snapshots
//! build their formats on. Must never: log or print a key, accept a key file others can read,
//! or hand back bytes that failed authentication.
//!
//! # Key file
//! Either exactly 32 bytes (a raw key; its id is 1), or text lines `id:key` where `id` is a
//! decimal number from 1 to 4294967295 and `key` is 64 hex digits (32 bytes). Blank lines and
//! lines starting with `#` are skipped. The **last** line's key is the current one: new blocks
//! are sealed with it, older ids still open what they sealed. So a rotation appends a line, and
//! an old line is removed once nothing on disk names its id (`basalt check` says which ids are
//! in use). The file must not be readable or writable by group or others (mode `0600` or
//! stricter), as ssh insists for its keys.
//!
//! # Blocks
//! A block is sealed under one key id with a 96-bit nonce and associated data chosen by the
//! caller (its format's position and generation, so a block cannot be moved or replayed
//! elsewhere unnoticed); the 16-byte tag is kept apart from the ciphertext so formats can place
//! it where they like. Key id 0 is never a key: formats use it to say "not encrypted".
//!
//! A data dir records a *key check* per key id ([`Keyring::key_check`]): a tag over nothing
//! under that key. Comparing it tells a wrong key from a damaged block with a clear message
//! before anything else is read.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes of an authentication tag.
pub const TAG_BYTES: usize = 16;
/// The key id formats write for a block that is not encrypted.
pub const PLAINTEXT_KEY_ID: u32 = 0;

/// Why a key file or a block was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("encryption key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "encryption key file {path} has mode {mode:04o}: it must not be readable or writable by \
         group or others (chmod 600 it)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("encryption key file {path}, line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("encryption key file {path} holds no key")]
    Empty { path: PathBuf },
    #[error("encryption key id {id} is not in the key file (data written with it cannot be read)")]
    UnknownKey { id: u32 },
    /// The block's bytes, tag, nonce or associated data changed since it was sealed, or the key
    /// with its id is not the one that sealed it.
    #[error("encrypted block failed authentication (damaged, moved, or a different key {id})")]
    Authentication { id: u32 },
    #[error(
        "encryption key file {path}: key id {id} was removed while the server runs (stop it \
         to drop a key)"
    )]
    KeyRemoved { path: PathBuf, id: u32 },
    #[error("the system random source failed")]
    Random,
}

/// The keyring as the server holds it: replaced whole when the key file changes (a rotation),
/// loaded by each writer of a block so the next block uses the newest current key.
pub type SharedKeyring = std::sync::Arc<arc_swap::ArcSwap<Keyring>>;

/// The keys of a key file, by id, and which one seals new blocks.
pub struct Keyring {
    keys: BTreeMap<u32, LessSafeKey>,
    current: u32,
    nonces: Mutex<NoncePool>,
}

/// Random bytes drawn from the system source in blocks, handed out as nonces: one `getrandom`
/// per block, not per sealed block (measured: a put cost one system call more without it).
/// Each byte is handed out once.
struct NoncePool {
    random: SystemRandom,
    bytes: [u8; NONCE_POOL_BYTES],
    used: usize,
}

const NONCE_POOL_BYTES: usize = NONCE_BYTES * 340;

impl NoncePool {
    fn new() -> Mutex<NoncePool> {
        Mutex::new(NoncePool {
            random: SystemRandom::new(),
            bytes: [0; NONCE_POOL_BYTES],
            used: NONCE_POOL_BYTES,
        })
    }

    fn take(&mut self) -> Result<[u8; NONCE_BYTES], Error> {
        if self.used + NONCE_BYTES > NONCE_POOL_BYTES {
            self.random
                .fill(&mut self.bytes)
                .map_err(|_| Error::Random)?;
            self.used = 0;
        }
        let nonce = self.bytes[self.used..self.used + NONCE_BYTES]
            .try_into()
            .expect("12 bytes");
        self.used += NONCE_BYTES;
        Ok(nonce)
    }
}

impl fmt::Debug for Keyring {
    /// Names the ids only: a key never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl Keyring {
    /// Reads and checks a key file (permissions first, so a key others can read is never used).
    pub fn load(path: &Path) -> Result<Keyring, Error> {
        let read_error = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        Keyring::parse(&bytes, path)
    }

    /// Parses a key file's bytes; `path` only names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Keyring, Error> {
        let syntax = |line: usize, reason: String| Error::Syntax {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut keys = BTreeMap::new();
        let mut current = None;
        if bytes.len() == KEY_BYTES && std::str::from_utf8(bytes).map_or(true, |s| !s.contains(':'))
        {
            keys.insert(1, key_from_bytes(bytes));
            current = Some(1);
        } else {
            let text = std::str::from_utf8(bytes).map_err(|_| {
                syntax(
                    1,
                    "neither 32 raw bytes nor text lines of id:key".to_string(),
                )
            })?;
            for (index, raw_line) in text.lines().enumerate() {
                let line_number = index + 1;
                let line = raw_line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (id_text, key_text) = line.split_once(':').ok_or_else(|| {
                    syntax(line_number, "expected id:key (key as 64 hex digits)".into())
                })?;
                let id: u32 = id_text.trim().parse().map_err(|_| {
                    syntax(
                        line_number,
                        format!(
                            "key id {:?} is not a number from 1 to 4294967295",
                            id_text.trim()
                        ),
                    )
                })?;
                if id == PLAINTEXT_KEY_ID {
                    return Err(syntax(line_number, "key id 0 is reserved".into()));
                }
                let key = parse_hex_key(key_text.trim())
                    .ok_or_else(|| syntax(line_number, "key must be 64 hex digits".into()))?;
                if keys.insert(id, key_from_bytes(&key)).is_some() {
                    return Err(syntax(line_number, format!("key id {id} appears twice")));
                }
                current = Some(id);
            }
        }
        let current = current.ok_or_else(|| Error::Empty {
            path: path.to_path_buf(),
        })?;
        Ok(Keyring {
            keys,
            current,
            nonces: NoncePool::new(),
        })
    }

    /// A keyring of one key, for tests and tools that make a key themselves.
    pub fn single(id: u32, key: &[u8; KEY_BYTES]) -> Keyring {
        assert_ne!(id, PLAINTEXT_KEY_ID, "key id 0 is reserved");
        Keyring {
            keys: BTreeMap::from([(id, key_from_bytes(key))]),
            current: id,
            nonces: NoncePool::new(),
        }
    }

    /// This keyring as the one writers share (for a tool that loads a key file once).
    pub fn into_shared(self) -> SharedKeyring {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// The id new blocks are sealed with.
    pub fn current_id(&self) -> u32 {
        self.current
    }

    /// Every id this keyring can open, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    pub fn has(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
    }

    /// A fresh random nonce.
    pub fn random_nonce(&self) -> Result<[u8; NONCE_BYTES], Error> {
        self.nonces.lock().expect("never poisoned").take()
    }

    /// Encrypts `block` in place under key `id`; returns the tag to store beside it.
    pub fn seal(
        &self,
        id: u32,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        block: &mut [u8],
    ) -> Result<[u8; TAG_BYTES], Error> {
        let key = self.key(id)?;
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), block)
            .map_err(|_| Error::Authentication { id })?;
        Ok(tag_bytes(tag))
    }

    /// Decrypts `block` in place; on failure `block` holds no plaintext and must not be used.
    pub fn open(
        &self,
        id: u32,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        block: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), Error> {
        let key = self.key(id)?;
        key.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            Tag::from(*tag),
            block,
            0..,
        )
        .map(|_| ())
        .map_err(|_| {
            block.fill(0);
            Error::Authentication { id }
        })
    }

    /// The tag of an empty block under key `id` with a fixed nonce: stored beside data sealed
    /// with `id` so a wrong key is named as such rather than as damage.
    pub fn key_check(&self, id: u32) -> Result<[u8; TAG_BYTES], Error> {
        self.seal(id, [0; NONCE_BYTES], KEY_CHECK_AAD, &mut [])
    }

    /// Whether the key this keyring holds as `id` is the one that made `check`.
    pub fn verify_key_check(&self, id: u32, check: &[u8; TAG_BYTES]) -> Result<(), Error> {
        match self.key_check(id)? == *check {
            true => Ok(()),
            false => Err(Error::Authentication { id }),
        }
    }

    fn key(&self, id: u32) -> Result<&LessSafeKey, Error> {
        self.keys.get(&id).ok_or(Error::UnknownKey { id })
    }
}

const KEY_CHECK_AAD: &[u8] = b"basalt key check v1";

/// A key file and the keyring last loaded from it: [`KeyFile::reload_if_changed`] re-reads the
/// file when `stat` says it changed (inode, size or mtime, as TLS files are re-read), so a key
/// appended by `basalt rekey` reaches a running server without a restart.
pub struct KeyFile {
    path: PathBuf,
    stamp: Option<(u64, u64, i128)>,
    shared: SharedKeyring,
}

impl KeyFile {
    /// Loads `path` (refusing it as [`Keyring::load`] does).
    pub fn load(path: &Path) -> Result<KeyFile, Error> {
        let stamp = file_stamp(path);
        let keyring = Keyring::load(path)?;
        Ok(KeyFile {
            path: path.to_path_buf(),
            stamp,
            shared: keyring.into_shared(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keyring writers share; it follows every successful reload.
    pub fn shared(&self) -> SharedKeyring {
        Arc::clone(&self.shared)
    }

    /// Re-reads the file if it changed since the last look. `Ok(Some(id))`: a new keyring
    /// (current id `id`) is in place. An error keeps the previous keyring: a half-written or
    /// wrongly permitted file never takes keys away from a running server. A new file must
    /// still hold every id the old one did, since data on disk may name them; dropping one
    /// takes a restart (after `basalt check` says nothing uses it).
    pub fn reload_if_changed(&mut self) -> Result<Option<u32>, Error> {
        let stamp = file_stamp(&self.path);
        if stamp == self.stamp {
            return Ok(None);
        }
        self.stamp = stamp;
        let keyring = Keyring::load(&self.path)?;
        let old = self.shared.load();
        if let Some(id) = old.ids().find(|&id| !keyring.has(id)) {
            return Err(Error::KeyRemoved {
                path: self.path.clone(),
                id,
            });
        }
        let current = keyring.current_id();
        self.shared.store(Arc::new(keyring));
        Ok(Some(current))
    }
}

/// What a file looks like to `stat`: (inode, size, mtime in ns), or None if it cannot be read.
fn file_stamp(path: &Path) -> Option<(u64, u64, i128)> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    Some((meta.ino(), meta.len(), mtime_ns))
}

fn key_from_bytes(bytes: &[u8]) -> LessSafeKey {
    let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key fits AES-256-GCM");
    LessSafeKey::new(unbound)
}

fn tag_bytes(tag: Tag) -> [u8; TAG_BYTES] {
    let mut out = [0; TAG_BYTES];
    out.copy_from_slice(tag.as_ref());
    out
}

fn parse_hex_key(text: &str) -> Option<[u8; KEY_BYTES]> {
    let digits = text.as_bytes();
    if digits.len() != KEY_BYTES * 2 {
        return None;
    }
    let mut key = [0; KEY_BYTES];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(key)
}

/// The text of a key file after a rotation, and the new key's id: `bytes` (a key file's
/// content, checked as [`Keyring::parse`] does) with a random key appended under the next id,
/// which becomes current. A raw 32-byte key file becomes text first (its key as line `1:`).
pub fn rotated_key_file(bytes: &[u8], path: &Path) -> Result<(String, u32), Error> {
    let keyring = Keyring::parse(bytes, path)?;
    let mut text = match std::str::from_utf8(bytes) {
        Ok(text) if text.contains(':') => text.to_owned(),
        _ => format!("1:{}", hex(bytes)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let id = keyring
        .ids()
        .max()
        .and_then(|max| max.checked_add(1))
        .ok_or_else(|| Error::Syntax {
            path: path.to_path_buf(),
            line: 0,
            reason: "no key id is left after 4294967295".into(),
        })?;
    text += &random_key_line(id)?;
    text.push('\n');
    Ok((text, id))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new key file line `id:hex` for a random key (what `basalt rekey` appends).
pub fn random_key_line(id: u32) -> Result<String, Error> {
    let mut key = [0u8; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Error::Random)?;
    Ok(format!("{id}:{}", hex(&key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("keys")
    }

    #[test]
    fn raw_key_is_id_one_and_lines_take_the_last_as_current() {
        let raw = Keyring::parse(&[7; 32], path()).unwrap();
        assert_eq!(raw.current_id(), 1);
        let text = format!(
            "# rotated\n1:{}\n\n7:{}\n",
            "ab".repeat(32),
            "0F".repeat(32)
        );
        let lines = Keyring::parse(text.as_bytes(), path()).unwrap();
        assert_eq!(lines.current_id(), 7);
        assert_eq!(lines.ids().collect::<Vec<_>>(), vec![1, 7]);
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let cases: [(String, &str); 5] = [
            ("1:abcd\n".to_string(), "64 hex digits"),
            ("0:".to_string() + &"00".repeat(32), "reserved"),
            (format!("1:{0}\n1:{0}\n", "00".repeat(32)), "twice"),
            ("x:".to_string() + &"00".repeat(32), "not a number"),
            ("# only a comment\n".to_string(), "holds no key"),
        ];
        for (text, needle) in cases {
            let err = Keyring::parse(text.as_bytes(), path()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("basalt-crypt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, [1u8; 32]).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::load(&file).unwrap_err();
        assert!(
            matches!(err, Error::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Keyring::load(&file).unwrap().current_id(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sealed_blocks_open_only_unchanged_under_their_key_and_aad() {
        let ring = Keyring::single(3, &[9; 32]);
        let nonce = ring.random_nonce().unwrap();
        let mut block = b"secret key name".to_vec();
        let tag = ring.seal(3, nonce, b"page 12", &mut block).unwrap();
        assert_ne!(&block[..], b"secret key name");

        let mut moved = block.clone();
        assert!(ring.open(3, nonce, b"page 13", &mut moved, &tag).is_err());
        assert!(
            moved.iter().all(|&b| b == 0),
            "failed open leaves no plaintext"
        );

        let mut flipped = block.clone();
        flipped[4] ^= 1;
        assert!(ring.open(3, nonce, b"page 12", &mut flipped, &tag).is_err());

        let other = Keyring::single(3, &[8; 32]);
        let mut wrong_key = block.clone();
        assert!(other
            .open(3, nonce, b"page 12", &mut wrong_key, &tag)
            .is_err());
        assert!(other
            .verify_key_check(3, &ring.key_check(3).unwrap())
            .is_err());
        assert!(matches!(
            ring.open(4, nonce, b"page 12", &mut block.clone(), &tag),
            Err(Error::UnknownKey { id: 4 })
        ));

        ring.open(3, nonce, b"page 12", &mut block, &tag).unwrap();
        assert_eq!(&block[..], b"secret key name");
    }

    #[test]
    fn a_changed_key_file_is_reloaded_and_a_bad_one_keeps_the_old_keys() {
        let dir = std::env::temp_dir().join(format!("basalt-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        let write = |text: &str, mode: u32| {
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let first = random_key_line(1).unwrap();
        write(&format!("{first}\n"), 0o600);
        let mut keys = KeyFile::load(&file).unwrap();
        let shared = keys.shared();
        assert_eq!(keys.reload_if_changed().unwrap(), None);

        let second = random_key_line(2).unwrap();
        write(&format!("{first}\n{second}\n"), 0o600);
        assert_eq!(keys.reload_if_changed().unwrap(), Some(2));
        assert_eq!(shared.load().current_id(), 2);

        write(&format!("{first}\n{second}\nthree\n"), 0o600);
        assert!(keys.reload_if_changed().is_err());
        write(&format!("{second}\n"), 0o600);
        let dropped = keys.reload_if_changed().unwrap_err();
        assert!(
            dropped.to_string().contains("key id 1 was removed"),
            "{dropped}"
        );
        write(&format!("{first}\n{second}\n"), 0o644);
        assert!(matches!(
            keys.reload_if_changed(),
            Err(Error::Permissions { .. })
        ));
        assert_eq!(shared.load().ids().collect::<Vec<_>>(), vec![1, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rotation_appends_the_next_id_and_keeps_every_key() {
        let raw = [5u8; 32];
        let (text, id) = rotated_key_file(&raw, path()).unwrap();
        assert_eq!(id, 2);
        let ring = Keyring::parse(text.as_bytes(), path()).unwrap();
        assert_eq!(ring.current_id(), 2);
        let old = Keyring::parse(&raw, path()).unwrap();
        let check = old.key_check(1).unwrap();
        ring.verify_key_check(1, &check).unwrap();

        let lines = format!("# keys\n3:{}", "ab".repeat(32));
        let (text, id) = rotated_key_file(lines.as_bytes(), path()).unwrap();
        assert_eq!(id, 4);
        assert!(text.starts_with(&format!("{lines}\n4:")), "{text}");
        assert!(rotated_key_file(b"1:zz\n", path()).is_err());
    }

    #[test]
    fn nonces_never_repeat_across_pool_refills() {
        let ring = Keyring::single(1, &[1; 32]);
        let nonces: std::collections::HashSet<_> =
            (0..1000).map(|_| ring.random_nonce().unwrap()).collect();
        assert_eq!(nonces.len(), 1000);
    }

    #[test]
    fn a_random_key_line_parses() {
        let line = random_key_line(5).unwrap();
        let ring = Keyring::parse(line.as_bytes(), path()).unwrap();
        assert_eq!(ring.current_id(), 5);
    }
}
