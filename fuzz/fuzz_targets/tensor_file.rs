//! Weight files (`--weights`, checkpoints): safetensors, PyTorch zip and legacy-pickle `.pth`.
//! Opening lists the tensors; reading each must fail cleanly on bad offsets, dtypes or shapes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visual_search_model::weights::TensorFile;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new_in("/dev/shm").expect("temp file");
    std::io::Write::write_all(&mut file, data).expect("write");
    let Ok(tensors) = TensorFile::open(file.path()) else {
        return;
    };
    for (name, entry) in &tensors.entries {
        if let Ok(values) = tensors.read_f32(name) {
            assert_eq!(values.len(), entry.numel());
        }
    }
});
