//! `.npy` embeddings (`eval --embeddings`, `rank`): a crafted header (shape, dtype, order, length)
//! gets an error, never a panic or an allocation the file does not back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visual_search_retrieval::npy::read_f32;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new_in("/dev/shm").expect("temp file");
    std::io::Write::write_all(&mut file, data).expect("write");
    if let Ok((values, rows, cols)) = read_f32(file.path()) {
        assert_eq!(values.len(), rows * cols);
    }
});
