//! The crop-tolerant difference hash of `index dups` against the PIL reference of
//! `tools/make_dhash_fixtures.py`, on real grocery photos: all 81 hashes of each photo equal.

use visual_search_data::datasets::{locate_grocery, missing_test_dependency};
use visual_search_data::image::difference_hash::crop_tolerant_hash;
use visual_search_data::image::{DecodeLimits, decode_rgb_file};

#[test]
fn hashes_match_pil() {
    let Some(grocery) = locate_grocery() else {
        missing_test_dependency("grocery dataset not found (set VISUAL_SEARCH_DATASETS)");
        return;
    };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dhash.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e:?}"));
    let fixture: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let photos = fixture["photos"].as_array().unwrap();
    let mut mismatched = Vec::new();
    let mut hashes = Vec::new();
    for (photo, want) in photos.iter().zip(fixture["hashes"].as_array().unwrap()) {
        let img = decode_rgb_file(
            &grocery.join(photo.as_str().unwrap()),
            &DecodeLimits::default(),
        )
        .unwrap();
        let got = crop_tolerant_hash(&img);
        for (i, (g, w)) in got.hashes.iter().zip(want.as_array().unwrap()).enumerate() {
            let w = u64::from_str_radix(w.as_str().unwrap(), 16).unwrap();
            if *g != w {
                mismatched.push(format!("{photo} crop {i}: {g:016x} vs PIL {w:016x}"));
            }
        }
        hashes.push(got);
    }
    assert!(mismatched.is_empty(), "{mismatched:#?}");
    // Two photos of one kiwi are further apart than a photo and itself.
    assert_eq!(hashes[0].distance(&hashes[0]), 0);
    assert!(hashes[0].distance(&hashes[1]) > 5);
}
