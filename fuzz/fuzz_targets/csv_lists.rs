//! Every list format the CLI and trainer read (dev-set gallery and queries, Product10K lists,
//! mined pairs) plus the header sniffing: an error naming the row, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visual_search_data::csv_table::CsvTable;
use visual_search_data::formats::dev_set::{parse_gallery, parse_queries};
use visual_search_data::formats::mined_pairs::parse_mined_pairs;
use visual_search_data::formats::product10k::parse_product10k;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new_in("/dev/shm").expect("temp file");
    std::io::Write::write_all(&mut file, data).expect("write");
    let path = file.path();
    if let Ok(mut table) = CsvTable::open(path) {
        let _ = table.header().len();
        table.for_each_row(|_| {});
    }
    let _ = parse_gallery(path).map(|p| p.into_strict());
    let _ = parse_queries(path).map(|p| p.into_strict());
    let _ = parse_product10k(path).map(|p| p.into_strict());
    let _ = parse_mined_pairs(path).map(|p| p.into_strict());
});
