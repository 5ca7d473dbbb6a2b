//! Opening an on-disk index (`search`, `serve`, `index add`): `current`, `meta.json`, `items.csv`
//! and `embeddings.bin` as an attacker or a half-copied folder leaves them. An open index must
//! then search and look up items without panicking.
//!
//! Input: a flags byte, then `meta.json`, `items.csv` and `embeddings.bin` separated by the
//! 4-byte marker `\0--\0`. With flag bit 0 set the harness fills in the CRC-32s of the two data
//! files (when `meta.json` is a JSON object), so the fuzzer also reaches what comes after the
//! checksum test.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visual_search_retrieval::index::Index;

const MARK: &[u8] = b"\0--\0";

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(MARK.len()).position(|w| w == MARK) {
        parts.push(&rest[..at]);
        rest = &rest[at + MARK.len()..];
    }
    parts.push(rest);
    parts
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let parts = split(rest);
    let [meta, items, embeddings] = parts[..] else {
        return;
    };
    let mut meta = meta.to_vec();
    if flags & 1 == 1
        && let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(&meta)
    {
        m.insert("items_crc32".into(), crc32fast::hash(items).into());
        m.insert(
            "embeddings_crc32".into(),
            crc32fast::hash(embeddings).into(),
        );
        meta = serde_json::to_vec(&m).expect("json");
    }
    let dir = tempfile::tempdir_in("/dev/shm").expect("temp dir");
    let version = dir.path().join("v000001");
    std::fs::create_dir(&version).expect("mkdir");
    std::fs::write(dir.path().join("current"), "v000001\n").expect("write");
    std::fs::write(version.join("meta.json"), &meta).expect("write");
    std::fs::write(version.join("items.csv"), items).expect("write");
    std::fs::write(version.join("embeddings.bin"), embeddings).expect("write");
    let Ok(index) = Index::open(dir.path()) else {
        return;
    };
    let dim = index.meta.dim;
    let mut query = vec![0.0f32; dim];
    if let Some(first) = query.first_mut() {
        *first = 1.0;
    }
    let _ = index.search(&query, 5);
    let _ = index.view().map(|v| v.rows);
});
