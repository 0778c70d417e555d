use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

type Buckets = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

fn scratch(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("basalt-bbolt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn write(path: &std::path::Path, buckets: &Buckets) {
    let mut writer = BboltWriter::create(path, None).unwrap();
    for (name, records) in buckets {
        writer.begin_bucket(name).unwrap();
        for (key, value) in records {
            writer.put(key, value).unwrap();
        }
    }
    writer.finish().unwrap();
}

fn read(path: &std::path::Path) -> Result<Buckets, Error> {
    let len = std::fs::metadata(path)?.len();
    let file = BboltFile::open(path, len)?;
    let mut buckets = Buckets::new();
    for name in file.bucket_names()? {
        let mut entries = file.bucket(&name)?.expect("listed");
        let records = buckets.entry(name).or_default();
        while let Some((_, key, value)) = entries.next_record()? {
            records.insert(key.to_vec(), value.to_vec());
        }
    }
    Ok(buckets)
}

fn sample(records: usize, value_bytes: usize) -> Buckets {
    let mut buckets = Buckets::new();
    buckets.insert(b"empty".to_vec(), BTreeMap::new());
    let key = buckets.entry(b"key".to_vec()).or_default();
    for i in 0..records as u64 {
        key.insert(
            i.to_be_bytes().to_vec(),
            vec![(i % 251) as u8; value_bytes + (i as usize % 7)],
        );
    }
    buckets
        .entry(b"meta".to_vec())
        .or_default()
        .insert(b"consistent_index".to_vec(), 7u64.to_be_bytes().to_vec());
    buckets
}

#[test]
fn many_records_and_big_values_read_back_in_order() {
    let path = scratch("many");
    let mut buckets = sample(20_000, 40);
    buckets
        .get_mut(&b"meta"[..])
        .unwrap()
        .insert(b"huge".to_vec(), vec![9u8; 3 * PAGE_SIZE + 5]);
    write(&path, &buckets);
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len % PAGE_SIZE as u64, 0);
    assert!(!has_sha256_trailer(len));
    assert!(looks_like_bbolt(&std::fs::read(&path).unwrap()[..64]));
    assert_eq!(read(&path).unwrap(), buckets);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn damage_is_refused_naming_the_page() {
    let path = scratch("damage");
    write(&path, &sample(2_000, 30));
    let good = std::fs::read(&path).unwrap();

    let mut truncated = good.clone();
    truncated.truncate(good.len() - PAGE_SIZE);
    std::fs::write(&path, &truncated).unwrap();
    let error = read(&path).unwrap_err().to_string();
    assert!(error.contains("truncated"), "{error}");

    let mut flipped = good.clone();
    flipped[3 * PAGE_SIZE + 8] = 0x40;
    std::fs::write(&path, &flipped).unwrap();
    let error = read(&path).unwrap_err().to_string();
    assert!(error.contains("page 3"), "{error}");

    let mut both_metas = good.clone();
    both_metas[PAGE_HEADER_BYTES] ^= 1;
    both_metas[PAGE_SIZE + PAGE_HEADER_BYTES + 30] ^= 1;
    std::fs::write(&path, &both_metas).unwrap();
    let error = read(&path).unwrap_err().to_string();
    assert!(error.contains("meta 0: magic"), "{error}");
    assert!(error.contains("meta 1: meta checksum"), "{error}");

    let mut one_meta = good.clone();
    one_meta[PAGE_SIZE + PAGE_HEADER_BYTES + 30] ^= 1;
    std::fs::write(&path, &one_meta).unwrap();
    assert!(read(&path).is_ok(), "the other meta is used");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn the_writer_refuses_unsorted_keys() {
    let path = scratch("unsorted");
    let mut writer = BboltWriter::create(&path, None).unwrap();
    writer.begin_bucket(b"b").unwrap();
    writer.put(b"b", b"").unwrap();
    assert!(writer.put(b"a", b"").is_err());
    std::fs::remove_file(path).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn any_sorted_buckets_round_trip(
        buckets in prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), 1..12),
            prop::collection::btree_map(
                prop::collection::vec(any::<u8>(), 1..300),
                prop::collection::vec(any::<u8>(), 0..5000),
                0..200,
            ),
            0..6,
        )
    ) {
        let path = scratch("prop");
        write(&path, &buckets);
        prop_assert_eq!(read(&path).unwrap(), buckets);
        std::fs::remove_file(path).unwrap();
    }
}
