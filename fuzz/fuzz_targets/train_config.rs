//! The training YAML: unknown keys, wrong types, out-of-range numbers and YAML bombs get an error
//! naming the key, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visual_search_train::config::TrainConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = TrainConfig::parse(text, std::path::Path::new("fuzz.yaml"));
});
