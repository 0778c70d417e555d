//! The WAL on real O_DIRECT files: a round trip through close and reopen, and the directory
//! lock that keeps a second writer out.

mod wal_common;

use basalt_engine::wal::{DmaStorage, RecordRef, Wal, WalError, WalOptions};
use wal_common::{payload, run, Model};

/// Segments small enough that a few hundred records roll through several of them.
fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 256 << 10,
        batch_bytes_max: 64 << 10,
        pending_bytes_max: 256 << 10,
        max_wals: 0,
        keyring: None,
    }
}

#[test]
fn records_survive_close_and_reopen_and_a_second_opener_is_refused() {
    let dir = std::env::temp_dir().join(format!("basalt-wal-dma-{}", std::process::id()));
    run(async {
        let opts = small_segments();
        let (wal, _) = Wal::open(DmaStorage, &dir, opts.clone()).await.unwrap();
        let second = Wal::open(DmaStorage, &dir, opts.clone()).await;
        assert!(
            matches!(second, Err(WalError::Locked { .. })),
            "{:?}",
            second.err()
        );
        let mut model = Model::default();
        // Enough to roll through several segments.
        for index in 1..=600u64 {
            let p = payload(3, index, (index as usize * 37) % 2000);
            let r = RecordRef::entry(3, index, &p);
            wal.append(&[r]).await.unwrap();
            model.apply(&r);
        }
        let hs = RecordRef::hard_state(b"term=3 vote=1 commit=600");
        wal.append(&[hs]).await.unwrap();
        model.apply(&hs);
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(DmaStorage, &dir, opts).await.unwrap();
        model.check(&wal, &rec).await.unwrap();
        wal.close().await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_relative_directory_works_like_an_absolute_one() {
    // Relative to the test's working directory (the crate root), removed afterwards.
    let dir = std::path::PathBuf::from(format!("target-wal-relative-{}", std::process::id()));
    let cleanup = dir.clone();
    run(async move {
        let opts = small_segments();
        let (wal, _) = Wal::open(DmaStorage, &dir, opts.clone()).await.unwrap();
        let p = payload(1, 1, 100);
        wal.append(&[RecordRef::entry(1, 1, &p)]).await.unwrap();
        wal.close().await.unwrap();
        let (wal, recovered) = Wal::open(DmaStorage, &dir, opts).await.unwrap();
        assert_eq!(recovered.last_index, 1);
        wal.close().await.unwrap();
    });
    std::fs::remove_dir_all(&cleanup).unwrap();
}
