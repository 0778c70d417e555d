//! The background task that keeps the next segment ready: created under a temporary name,
//! zero-filled with real writes (so its extents are written, not merely allocated), synced,
//! then renamed into place. The writer takes finished segments from a channel and never waits
//! on this work unless it outruns it.
//!
//! One segment is kept ready, as etcd's file pipeline keeps one: the next is made only once
//! the writer has taken the last one ([`Segments::next`]), that is while the writer fills the
//! segment it just took. A segment takes far longer to fill than to zero, and every spare one
//! is `segment_bytes` of the data dir holding nothing.

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::storage::{SegmentFile, Storage, WriteBuf};

/// Zero-fill write size: large enough to stream, small enough to interleave with the hot path.
const ZERO_FILL_WRITE_BYTES: usize = 1 << 20;
/// Retries of a write that the device cut short before the WAL gives up on it.
pub const SHORT_WRITE_RETRIES_MAX: u32 = 8;

/// What the writer and the preallocator tell each other, and the space check reads.
#[derive(Default)]
pub struct Signals {
    /// The writer waits for the next segment: a full device now fails the log.
    pub writer_waiting: Cell<bool>,
    /// Bytes the segment being made still has to take from the device (a whole segment while
    /// it waits for space, 0 while a finished one waits for the writer).
    pub owed: Cell<u64>,
}

/// A ready segment: its sequence number and its open file.
pub type ReadySegment<F> = (u64, Rc<F>);

type Made<F> = io::Result<ReadySegment<F>>;

/// The writer's end of the pipeline.
pub struct Segments<F> {
    made: LocalReceiver<Made<F>>,
    taken: LocalSender<()>,
}

impl<F> Segments<F> {
    /// The next segment; None once the preallocator has stopped. Taking it lets the
    /// preallocator start on the one after.
    pub async fn next(&self) -> Option<Made<F>> {
        let made = self.made.recv().await;
        // Unbounded: never full. An error means the preallocator is gone, as `made` tells.
        let _ = self.taken.try_send(());
        made
    }
}

/// The preallocator's end of the pipeline.
pub struct Maker<F> {
    made: LocalSender<Made<F>>,
    taken: LocalReceiver<()>,
    /// A segment was handed over that the writer may not have taken yet.
    handed: bool,
}

pub fn pipeline<F>() -> (Maker<F>, Segments<F>) {
    let (made_tx, made_rx) = local_channel::new_bounded(1);
    let (taken_tx, taken_rx) = local_channel::new_unbounded();
    (
        Maker {
            made: made_tx,
            taken: taken_rx,
            handed: false,
        },
        Segments {
            made: made_rx,
            taken: taken_tx,
        },
    )
}

impl<F> Maker<F> {
    /// Waits until the writer took the segment handed over last; false when it is gone.
    async fn wait_taken(&mut self) -> bool {
        !std::mem::replace(&mut self.handed, false) || self.taken.recv().await.is_some()
    }

    /// False when the writer is gone.
    async fn hand_over(&mut self, made: Made<F>) -> bool {
        self.handed = true;
        self.made.send(made).await.is_ok()
    }
}

pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// The sequence number in a segment file name, or None for any other file.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub const TEMP_SUFFIX: &str = ".tmp";

/// Writes all of `buf` at `pos`, rewriting the whole buffer when the device writes less.
pub async fn write_all<F: SegmentFile>(file: &F, buf: &Rc<F::Buf>, pos: u64) -> io::Result<()> {
    let len = buf.bytes().len();
    for _ in 0..=SHORT_WRITE_RETRIES_MAX {
        if file.write_at(Rc::clone(buf), pos).await? == len {
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WriteZero,
        format!(
            "write of {len} bytes at {pos} stayed short after {SHORT_WRITE_RETRIES_MAX} retries"
        ),
    ))
}

/// Hands `maker`'s writer the `ready` segments, then with new ones from `next_seq` on, until the
/// receiver goes away or a segment cannot be made (the error is sent, then the task ends).
/// `signals.owed` follows the making, so that a space check can count what the log is taking.
///
/// A full device (ENOSPC, EDQUOT) is not an error while the writer still has room in the
/// segments it holds (`signals.writer_waiting` false): the partial segment is removed and the task
/// tries again every [`Storage::full_retry_interval`] once the filesystem has a segment's worth free,
/// so the log goes on when space returns. Once the writer waits for the segment, the error is
/// sent: the log cannot take another record.
pub async fn run<S: Storage>(
    storage: S,
    dir: PathBuf,
    segment_bytes: u64,
    ready: Vec<ReadySegment<S::File>>,
    mut next_seq: u64,
    mut maker: Maker<S::File>,
    signals: Rc<Signals>,
) {
    let owed = &signals.owed;
    for seg in ready {
        if !maker.wait_taken().await || !maker.hand_over(Ok(seg)).await {
            return;
        }
    }
    loop {
        if !maker.wait_taken().await {
            return;
        }
        owed.set(segment_bytes);
        let made = loop {
            let made = make_segment(&storage, &dir, segment_bytes, next_seq, owed).await;
            let Err(error) = &made else { break made };
            // No partial segment is left behind (recovery would remove it too).
            let temp = dir.join(format!("{}{TEMP_SUFFIX}", segment_name(next_seq)));
            let _ = storage.remove(&temp).await;
            if !crate::disk::is_out_of_space(error) || signals.writer_waiting.get() {
                break made;
            }
            owed.set(segment_bytes);
            wait_for_space(&storage, &dir, segment_bytes, &signals.writer_waiting).await;
        };
        let failed = made.is_err();
        if !failed {
            owed.set(0);
        }
        if !maker.hand_over(made).await || failed {
            return;
        }
        next_seq += 1;
    }
}

/// Sleeps until the filesystem of `dir` has `segment_bytes` free (or cannot say) or the writer
/// waits for a segment.
async fn wait_for_space<S: Storage>(
    storage: &S,
    dir: &Path,
    segment_bytes: u64,
    writer_waiting: &Cell<bool>,
) {
    loop {
        glommio::timer::sleep(storage.full_retry_interval()).await;
        let room = storage
            .available_bytes(dir)
            .map_or(true, |free| free > segment_bytes);
        if room || writer_waiting.get() {
            return;
        }
    }
}

async fn make_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    segment_bytes: u64,
    seq: u64,
    owed: &Cell<u64>,
) -> io::Result<ReadySegment<S::File>> {
    let name = segment_name(seq);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let file = storage.create(&temp).await?;
    let zeros = zero_buf(&file, ZERO_FILL_WRITE_BYTES.min(segment_bytes as usize));
    let mut pos = 0;
    while pos < segment_bytes {
        let left = (segment_bytes - pos) as usize;
        if left < zeros.bytes().len() {
            write_all(&file, &zero_buf(&file, left), pos).await?;
        } else {
            write_all(&file, &zeros, pos).await?;
        }
        pos += zeros.bytes().len().min(left) as u64;
        owed.set(segment_bytes - pos);
    }
    file.fdatasync().await?;
    drop(file);
    let path = dir.join(&name);
    storage.rename(&temp, &path).await?;
    storage.sync_dir(dir).await?;
    // Reopened as a finished segment: the way the writer's appends are durable on completion.
    Ok((seq, Rc::new(storage.open(&path).await?)))
}

fn zero_buf<F: SegmentFile>(file: &F, len: usize) -> Rc<F::Buf> {
    let mut buf = file.alloc(len);
    buf.bytes_mut().fill(0);
    Rc::new(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_sequence_and_parse_back() {
        for seq in [0, 1, 0xff, u64::MAX] {
            assert_eq!(parse_segment_name(&segment_name(seq)), Some(seq));
        }
        assert!(segment_name(9) < segment_name(10));
        for other in [
            "x.wal",
            "0000000000000001.wal.tmp",
            "0000000000000001",
            "lock",
        ] {
            assert_eq!(parse_segment_name(other), None, "{other}");
        }
    }
}
