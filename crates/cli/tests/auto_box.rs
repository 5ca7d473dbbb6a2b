//! `--auto-box` end to end with the real EfficientNet-Lite0 weights: a kiwi photo pasted into a
//! scene of other products' photos is found by `search --auto-box`, `POST /search?box=auto` and
//! `eval --auto-box`, with a box that overlaps where the photo was pasted.

mod common;

use common::{http, kiwi_scene, run_ok, start_server};

/// Intersection over union of two `[x, y, w, h]` boxes.
fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let ix = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let iy = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let inter = ix.max(0.0) * iy.max(0.0);
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

#[test]
fn auto_box_finds_the_product_in_a_cluttered_scene() {
    let Some(shop) = common::grocery_shop() else {
        return;
    };
    let (grocery, weights, root) = (&shop.grocery, &shop.weights, &shop.root);
    let (index, _) = shop.index();
    let (photo, truth) = kiwi_scene(grocery, shop.dir.path());

    // The command line prints the box it found, then the results.
    let text = run_ok(&[
        "search",
        "--index",
        index.to_str().unwrap(),
        "--device",
        "flex",
        "--k",
        "3",
        "--auto-box",
        photo.to_str().unwrap(),
    ]);
    let found: Vec<f64> = text
        .split("auto-box ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no box in {text}"))
        .split(',')
        .map(|v| v.parse().unwrap_or_else(|_| panic!("no box in {text}")))
        .collect();
    let found = [found[0], found[1], found[2], found[3]];
    assert!(
        iou(found, truth) > 0.4,
        "box {found:?} vs {truth:?}: {text}"
    );
    let top_label = text
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(top_label, "7", "the kiwi: {text}");

    // The service answers the same, and says which box it searched with.
    let server = start_server(&index);
    let bytes = std::fs::read(&photo).unwrap();
    let (status, _, body) = http(
        &server.addr,
        "POST",
        "/search?k=3&box=auto",
        "image/jpeg",
        &bytes,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let b: Vec<f64> = reply["box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        iou([b[0], b[1], b[2], b[3]], found) > 0.95,
        "{reply} vs {found:?}"
    );
    assert_eq!(reply["results"][0]["label"], 7, "{reply}");
    for bad in ["/search?box=auto&bbox=1,1,50,50", "/search?box=left"] {
        let (status, _, body) = http(&server.addr, "POST", bad, "image/jpeg", &bytes);
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    // A server started without the window model refuses box=auto with a reason.
    let lean = common::start_server_with(&index, &["--no-auto-box"]);
    let (status, _, body) = http(&lean.addr, "POST", "/search?box=auto", "image/jpeg", &bytes);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("window model"));
    drop(lean);
    // Without box=auto there is no "box" in the answer.
    let (_, _, body) = http(&server.addr, "POST", "/search?k=3", "image/jpeg", &bytes);
    let plain: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(plain.get("box").is_none(), "{plain}");

    // `eval --auto-box` on a dev set whose one query is the scene without a box.
    std::fs::copy(&photo, root.join("scene.jpg")).unwrap();
    std::fs::write(
        root.join("queries.csv"),
        "img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h\nscene.jpg,7,,,,\n",
    )
    .unwrap();
    let eval = run_ok(&[
        "eval",
        "--model",
        "efficientnet_lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--device",
        "flex",
        "--dataset-dir",
        root.to_str().unwrap(),
        "--auto-box",
        "--json",
    ]);
    let last = eval
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {eval}"));
    let cost = &json["query_cost"];
    assert_eq!(cost["auto_box"]["searched"], 1, "{json}");
    assert_eq!(cost["auto_box"]["boxed"], 1, "{json}");
    assert_eq!(json["recall_at_1"].as_f64(), Some(1.0), "{json}");
}
