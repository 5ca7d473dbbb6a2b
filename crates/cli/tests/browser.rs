//! The web page in headless Chromium: index a grocery catalogue, serve it, and let
//! `tools/browser/search_page.mjs` (playwright-core) pick an in-store photo of a kiwi on the
//! page, wait for the result grid, check that the first result is a kiwi and its thumbnail
//! loads, then draw a box and check the boxed search, click "similar" under a result (a search
//! by catalogue item) and pick two photos at once (one fused search), then a cluttered scene
//! without a box (the page asks for `box=auto` and draws the box found) and a photo of a product
//! the catalogue does not hold (the page says "not in the catalogue": the index is built without
//! that product and calibrated with `index calibrate`), then a metadata filter typed into the
//! filter box (the catalogue list carries a `category` column; every result must show the
//! category asked for). `tools/install_test_deps.sh` (run by test.sh and CI) installs
//! Chromium, Node and playwright-core.

mod common;

use std::path::Path;
use std::process::Command;

use common::{catalogue, lite0_index, start_server};

/// The product left out of the catalogue, and a photo of it.
const ABSENT: &str = "41";
const ABSENT_PHOTO: &str = "test/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_003.jpg";

#[test]
fn the_page_finds_the_product_in_headless_chromium() {
    let Some((grocery, weights)) = common::grocery_and_lite0() else {
        return;
    };
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !tools.join("node_modules/playwright-core").is_dir() || !Path::new(&chromium).exists() {
        visual_search_data::datasets::missing_test_dependency(
            "Chromium or playwright-core missing (run tools/install_test_deps.sh)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = catalogue(dir.path(), &grocery, 10);
    // The catalogue without one product (label ABSENT), calibrated on queries that include it.
    let gallery = std::fs::read_to_string(root.join("gallery.csv")).unwrap();
    let kept: Vec<String> = gallery
        .lines()
        .filter(|l| !l.ends_with(&format!(",{ABSENT}")))
        .map(common::with_category)
        .collect();
    std::fs::write(root.join("gallery.csv"), kept.join("\n") + "\n").unwrap();
    let (index, _) = lite0_index(dir.path(), &root, &weights);
    let queries = common::query_list(&root, &grocery, 6);
    common::calibrate(&["--index", index.to_str().unwrap()], &queries, &[]);
    let (scene, _) = common::kiwi_scene(&grocery, dir.path());
    let absent = grocery.join(ABSENT_PHOTO);
    let server = start_server(&index);
    let photo = grocery.join("test/Fruit/Kiwi/Kiwi_005.jpg");
    let second = grocery.join("test/Fruit/Kiwi/Kiwi_006.jpg");
    let out = Command::new("node")
        .current_dir(&tools)
        .env("CHROMIUM", &chromium)
        .args([
            "search_page.mjs",
            &format!("http://{}/", server.addr),
            photo.to_str().unwrap(),
            "7",
            second.to_str().unwrap(),
            scene.to_str().unwrap(),
            absent.to_str().unwrap(),
            "category=Packages",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"thumbnail\":true"), "{text}");
    assert!(text.contains("\"similarStatus\":200"), "{text}");
    assert!(text.contains("\"fusedStatus\":200"), "{text}");
    assert!(text.contains("Not in the catalogue"), "{text}");
    assert!(text.contains("category: Packages"), "{text}");
}
