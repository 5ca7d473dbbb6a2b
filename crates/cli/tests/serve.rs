//! `index build | add | info` and `serve` end to end: a grocery catalogue indexed with the real
//! EfficientNet-Lite0 weights, searched over HTTP with an in-store photo, then attacked with
//! hostile uploads — each must get a 4xx with a message while the server keeps serving.

mod common;

use common::{
    catalogue, http, http_with_headers, lite0_build, run_ok, start_server, start_server_with,
};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// A PNG whose header claims `w` × `h` pixels, followed by a scrap of image data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        c.extend_from_slice(&crc.finalize().to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn index_and_serve_the_grocery_catalogue() {
    let Some(shop) = common::grocery_shop() else {
        return;
    };
    let (grocery, root) = (&shop.grocery, &shop.root);
    let (index, text) = shop.index();
    assert!(text.contains("indexed 149 images"), "{text}");
    // `add` embeds with the index's own model reference.
    let extra = shop.dir.path().join("extra.csv");
    std::fs::write(
        &extra,
        "img_path,product_id,category\niconic-images-and-descriptions/Fruit/Kiwi/Kiwi_Iconic.jpg,7,Fruit\n",
    )
    .unwrap();
    run_ok(&[
        "index",
        "add",
        "--index",
        index.to_str().unwrap(),
        "--device",
        "flex",
        "--follow-links",
        "--csv",
        extra.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    let info = run_ok(&["index", "info", "--index", index.to_str().unwrap()]);
    assert!(
        info.contains("images     150") && info.contains("dimension  1280") && info.contains("F16"),
        "{info}"
    );
    assert!(info.contains("metadata   category"), "{info}");

    // The command-line search gives what the server will.
    let kiwi = grocery.join("test/Fruit/Kiwi/Kiwi_005.jpg");
    let search_cli = |k: &str, extra: &[&str]| {
        let mut args = vec![
            "search",
            "--index",
            index.to_str().unwrap(),
            "--device",
            "flex",
            "--k",
            k,
        ];
        args.extend_from_slice(extra);
        run_ok(&args)
    };
    let found = search_cli("3", &[kiwi.to_str().unwrap()]);
    let first: Vec<&str> = found
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("{found}"))
        .split_whitespace()
        .collect();
    assert_eq!(first[2], "7", "{found}");
    // A misspelled filter column would find nothing whatever the photo: it is named instead.
    for (extra, expected) in [
        (
            ["--filter", "categroy=Fruit"],
            "no catalogue item has categroy",
        ),
        (["--k", "0"], "'--k <K>': must be at least 1"),
    ] {
        let mut args = vec!["search", "--index", index.to_str().unwrap()];
        args.extend(extra);
        args.push(kiwi.to_str().unwrap());
        let out = common::bin().args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains(expected), "{text}");
    }

    let server = start_server(&index);
    let addr = server.addr.as_str();
    let photo = std::fs::read(grocery.join("test/Fruit/Kiwi/Kiwi_005.jpg")).unwrap();

    // A raw-body search: the top hit is the same product (a kiwi among 40 products).
    let (status, _, body) = http(addr, "POST", "/search?k=5", "image/jpeg", &photo);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let hits = json(&body);
    assert_eq!(hits["results"].as_array().unwrap().len(), 5);
    assert_eq!(hits["results"][0]["label"], 7, "{hits}");
    // Paths are the catalogue's own (relative to the list's root), not the server's.
    for hit in hits["results"].as_array().unwrap() {
        let path = hit["path"].as_str().unwrap();
        assert!(!path.starts_with('/') && root.join(path).is_file(), "{hit}");
    }
    let boundary = "XyZ";
    let mut form = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"k.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").into_bytes();
    form.extend_from_slice(&photo);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let multipart = format!("multipart/form-data; boundary={boundary}");
    let (status, _, body) = http(addr, "POST", "/search?k=3", &multipart, &form);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let whole = json(&body);
    assert_eq!(
        whole["results"][0], hits["results"][0],
        "multipart = raw body"
    );
    // A box changes what is embedded, so the scores change.
    let (status, _, body) = http(
        addr,
        "POST",
        "/search?k=3&bbox=100,100,150,150",
        &multipart,
        &form,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_ne!(
        json(&body)["results"][0]["score"],
        whole["results"][0]["score"]
    );

    // Hostile input: 4xx with a message, and the server keeps serving.
    let mut truncated = photo.clone();
    truncated.truncate(photo.len() / 3);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not an image", b"hello, world".to_vec(), 400),
        ("truncated JPEG", truncated, 400),
        ("30000x30000 PNG", png_claiming(30_000, 30_000), 400),
        ("100 MB upload", vec![0u8; 100 << 20], 413),
    ];
    for (what, body, want) in cases {
        let (status, _, reply) = http(addr, "POST", "/search", "application/octet-stream", &body);
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&reply));
        if want == 400 {
            assert!(
                json(&reply)["error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty()),
                "{what}"
            );
        }
    }
    let (status, _, body) = http(addr, "POST", "/search?k=0", "image/jpeg", &photo);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = http(addr, "POST", "/search?bbox=1,2,3", "image/jpeg", &photo);
    assert_eq!(status, 400);
    // A misspelt parameter is refused, not dropped for its default; a wrong type is named.
    for (query, named) in [
        ("/search?top_k=5", "top_k"),
        ("/search?k=ten", "k"),
        ("/items/149/similar?K=5", "K"),
    ] {
        let method = if query.starts_with("/search") {
            "POST"
        } else {
            "GET"
        };
        let (status, _, body) = http(addr, method, query, "image/jpeg", &photo);
        let error = json(&body)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            status == 400 && error.starts_with("query string: ") && error.contains(named),
            "{query}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let off_photo = "/search?bbox=100000,100000,50,50";
    let (status, _, body) = http(addr, "POST", off_photo, "image/jpeg", &photo);
    let text = String::from_utf8_lossy(&body);
    assert!(
        status == 400 && text.contains("outside the"),
        "{status} {text}"
    );
    // A box in fractions of the photo (read as pixels: one pixel) is refused, not searched.
    let fractions = "/search?bbox=0.1,0.2,0.5,0.4";
    let (status, _, body) = http(addr, "POST", fractions, "image/jpeg", &photo);
    let text = String::from_utf8_lossy(&body);
    assert!(
        status == 400 && text.contains("covers only 1x1 pixels"),
        "{status} {text}"
    );

    let (status, _, body) = http(addr, "POST", "/search?k=1", "image/jpeg", &photo);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["results"][0]["label"], 7);
    let (status, headers, body) = http(addr, "GET", "/images/149", "text/plain", b"");
    assert_eq!(status, 200);
    assert!(headers.to_ascii_lowercase().contains("image/jpeg") && body.starts_with(&[0xFF, 0xD8]));
    assert_eq!(http(addr, "GET", "/images/9999", "text/plain", b"").0, 404);
    assert_eq!(http(addr, "GET", "/healthz", "text/plain", b"").0, 200);
    let (_, _, page) = http(addr, "GET", "/", "text/plain", b"");
    assert!(String::from_utf8_lossy(&page).contains("find a product by photo"));
    let (_, _, metrics) = http(addr, "GET", "/metrics", "text/plain", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("visual_search_requests_total{route=\"search\",status=\"200\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("visual_search_index_rows 150"),
        "{metrics}"
    );

    // Several photos of one product in one request: one search with their mean embedding.
    let kiwi2 = grocery.join("test/Fruit/Kiwi/Kiwi_006.jpg");
    let photo2 = std::fs::read(&kiwi2).unwrap();
    let (status, _, body) = http(
        addr,
        "POST",
        "/search?k=5",
        &multipart,
        &multipart_form(boundary, &[&photo, &photo2]),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let fused = json(&body);
    assert_eq!(
        (fused["photos"].as_u64(), fused["k"].as_u64()),
        (Some(2), Some(5))
    );
    assert_eq!(fused["results"][0]["label"], 7, "{fused}");
    assert_ne!(fused["results"][0]["score"], hits["results"][0]["score"]);
    let many: Vec<&[u8]> = vec![photo.as_slice(); 17];
    let (status, _, body) = http(
        addr,
        "POST",
        "/search",
        &multipart,
        &multipart_form(boundary, &many),
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // The same from the command line.
    let fused_cli = search_cli(
        "5",
        &["--fuse", kiwi.to_str().unwrap(), kiwi2.to_str().unwrap()],
    );
    assert!(fused_cli.contains("2 photos fused:"), "{fused_cli}");
    let cli_score: f64 = fused_cli
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{fused_cli}"));
    let served_score = fused["results"][0]["score"].as_f64().unwrap();
    assert!(
        (cli_score - served_score).abs() < 1e-3,
        "{fused_cli} vs {fused}"
    );

    // Search by a catalogue item: its neighbours, itself left out.
    let (status, _, body) = http(addr, "GET", "/items/149/similar?k=5", "text/plain", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let similar = json(&body);
    let ids: Vec<u64> = similar["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert!(ids.len() == 5 && !ids.contains(&149), "{similar}");
    assert_eq!(similar["photos"], 0);
    for bad in ["/items/9999/similar", "/items/x/similar"] {
        assert_eq!(http(addr, "GET", bad, "text/plain", b"").0, 404, "{bad}");
    }
    // Search by an embedding the client made (here: item 149's stored row, scaled, since the
    // server normalises it): item 149 first, at cosine ~1, judged a match.
    let stored = {
        let opened = visual_search_retrieval::index::Index::open(&index).unwrap();
        let view = opened.view().unwrap();
        let mut scratch = Vec::new();
        view.rows_f32(149, 150, &mut scratch).to_vec()
    };
    // Scales whose squares overflow or vanish in f32 are still the same direction.
    for scale in [3.0f32, 1e30, 1e-30] {
        let scaled: Vec<f32> = stored.iter().map(|v| v * scale).collect();
        let body = serde_json::json!({"embedding": scaled, "k": 5}).to_string();
        let (status, _, reply) = http(
            addr,
            "POST",
            "/search/vector",
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        let by_vector = json(&reply);
        assert_eq!(by_vector["results"][0]["id"], 149, "x{scale}: {by_vector}");
        assert!(
            by_vector["results"][0]["score"].as_f64().unwrap() > 0.999,
            "x{scale}: {by_vector}"
        );
        assert_eq!(by_vector["k"], 5);
        assert!(by_vector["match"].is_object(), "{by_vector}");
    }
    let zeros = vec![0.0f32; stored.len()];
    for (bad, why) in [
        (
            serde_json::json!({"embedding": &stored[..10]}).to_string(),
            "holds",
        ),
        (
            serde_json::json!({"embedding": zeros}).to_string(),
            "all zeros",
        ),
        (
            serde_json::json!({"embedding": stored, "k": 0}).to_string(),
            "k must be",
        ),
        (
            serde_json::json!({"embedding": stored, "kk": 1}).to_string(),
            "unknown field",
        ),
        ("[1, 2".to_string(), "must be JSON"),
    ] {
        let (status, _, reply) = http(
            addr,
            "POST",
            "/search/vector",
            "application/json",
            bad.as_bytes(),
        );
        let text = String::from_utf8_lossy(&reply);
        assert!(status == 400 && text.contains(why), "{status} {text}");
    }
    // A server without a model answers embeddings and refuses photos.
    let bare = start_server_with(&index, &["--vectors-only"]);
    let body = serde_json::json!({"embedding": stored, "k": 3}).to_string();
    let (status, _, reply) = http(
        &bare.addr,
        "POST",
        "/search/vector",
        "application/json",
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(json(&reply)["results"][0]["id"], 149);
    let (status, _, reply) = http(&bare.addr, "POST", "/search", "image/jpeg", &photo);
    assert!(
        status == 400 && String::from_utf8_lossy(&reply).contains("--vectors-only"),
        "{status} {}",
        String::from_utf8_lossy(&reply)
    );
    drop(bare);
    let by_item = search_cli("5", &["--item", "149"]);
    let (title, table) = by_item.split_once('\n').unwrap();
    assert!(
        title.starts_with("item 149 (") && title.contains("Kiwi_Iconic"),
        "{by_item}"
    );
    assert!(!table.contains("Kiwi_Iconic"), "{by_item}");
    // The command line lists what the server does, best first.
    let first_path = table
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("{by_item}"));
    assert!(
        first_path.ends_with(similar["results"][0]["path"].as_str().unwrap()),
        "{by_item} vs {similar}"
    );

    // Metadata filters: only the added item has `category`; labels filter too.
    let (status, _, body) = http(
        addr,
        "POST",
        "/search?k=5&filter=category%3DFruit",
        "image/jpeg",
        &photo,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let filtered = json(&body);
    assert_eq!(filtered["k"], 1, "{filtered}");
    assert_eq!(filtered["results"][0]["id"], 149);
    assert_eq!(filtered["results"][0]["metadata"]["category"], "Fruit");
    let (_, _, body) = http(
        addr,
        "POST",
        "/search?k=5&filter=label%3D7",
        "image/jpeg",
        &photo,
    );
    let by_label = json(&body);
    assert!(
        by_label["results"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r.iter().all(|h| h["label"] == 7)),
        "{by_label}"
    );
    let (status, _, body) = http(
        addr,
        "POST",
        "/search?filter=category",
        "image/jpeg",
        &photo,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = http(
        addr,
        "GET",
        "/items/0/similar?k=3&filter=category%3DFruit",
        "text/plain",
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["results"][0]["id"], 149);
    // A column no item has (a typo) is named; a value no item has is an empty answer.
    for route in ["/search", "/items/0/similar"] {
        let (method, body) = match route {
            "/search" => ("POST", photo.as_slice()),
            _ => ("GET", &b""[..]),
        };
        let (status, _, reply) = http(
            addr,
            method,
            &format!("{route}?filter=categroy%3DFruit"),
            "image/jpeg",
            body,
        );
        let text = String::from_utf8_lossy(&reply);
        assert!(
            status == 400 && text.contains("no catalogue item has categroy"),
            "{text}"
        );
        let (status, _, reply) = http(
            addr,
            method,
            &format!("{route}?filter=category%3DDairy"),
            "image/jpeg",
            body,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        assert_eq!(json(&reply)["results"].as_array().map(Vec::len), Some(0));
    }
    let filtered_cli = search_cli("5", &["--filter", "category=Fruit", kiwi.to_str().unwrap()]);
    let rows: Vec<&str> = filtered_cli
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .collect();
    assert!(
        rows.len() == 1 && rows[0].contains("Kiwi_Iconic") && rows[0].contains("category=Fruit"),
        "{filtered_cli}"
    );

    // The catalogue changes while the server runs: each change is a new version, served
    // without a restart.
    let edit = |args: &[&str]| {
        let mut all = vec!["index"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--index", index.to_str().unwrap()]);
        run_ok(&all)
    };
    let served_rows = || {
        let (_, _, m) = http(addr, "GET", "/metrics", "text/plain", b"");
        let m = String::from_utf8_lossy(&m).into_owned();
        m.lines()
            .find_map(|l| l.strip_prefix("visual_search_index_rows "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{m}"))
    };
    let wait_for_rows = |want: usize| {
        let start = std::time::Instant::now();
        while served_rows() != want {
            assert!(start.elapsed().as_secs() < 30, "never served {want} rows");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let kiwi_rows = |body: &[u8]| {
        json(body)["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["label"] == 7)
            .count()
    };
    let (_, _, body) = http(addr, "POST", "/search?k=150", "image/jpeg", &photo);
    let kiwis = kiwi_rows(&body);
    assert!(kiwis > 1, "{}", String::from_utf8_lossy(&body));
    let first_kiwi = json(&body)["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["label"] == 7)
        .filter_map(|h| h["id"].as_u64())
        .min()
        .unwrap();
    // Upsert product 7 with one photo: its other images go.
    let one_kiwi = shop.dir.path().join("one_kiwi.csv");
    std::fs::write(
        &one_kiwi,
        "img_path,product_id,category\ntest/Fruit/Kiwi/Kiwi_001.jpg,7,Fruit\n",
    )
    .unwrap();
    let text = edit(&[
        "upsert",
        "--device",
        "flex",
        "--follow-links",
        "--csv",
        one_kiwi.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(
        text.contains(&format!("replaced {kiwis} images and added 1")),
        "{text}"
    );
    wait_for_rows(150 - kiwis + 1);
    let (_, _, body) = http(addr, "POST", "/search?k=150", "image/jpeg", &photo);
    assert_eq!(kiwi_rows(&body), 1, "{}", String::from_utf8_lossy(&body));
    let text = edit(&["delete", "--key", "7"]);
    assert!(text.contains("deleted 1 images"), "{text}");
    wait_for_rows(150 - kiwis);
    let (_, _, body) = http(addr, "POST", "/search?k=150", "image/jpeg", &photo);
    assert_eq!(kiwi_rows(&body), 0);
    assert_eq!(
        http(
            addr,
            "GET",
            &format!("/images/{first_kiwi}"),
            "text/plain",
            b""
        )
        .0,
        404,
        "a deleted item is gone"
    );
    let info = edit(&["info"]);
    assert!(
        info.contains(&format!("deleted    {} rows", kiwis + 1)),
        "{info}"
    );
    let text = edit(&["compact"]);
    assert!(
        text.contains(&format!("dropped {} deleted rows", kiwis + 1)),
        "{text}"
    );
    let info = edit(&["info"]);
    assert!(
        info.contains(&format!("images     {}", 150 - kiwis)) && !info.contains("deleted"),
        "{info}"
    );
    // After compaction ids are dense again: a deleted kiwi's id names another image, once the
    // server serves the compacted version.
    assert!(first_kiwi < (150 - kiwis) as u64);
    let image_status = || {
        http(
            addr,
            "GET",
            &format!("/images/{first_kiwi}"),
            "text/plain",
            b"",
        )
        .0
    };
    let start = std::time::Instant::now();
    while image_status() != 200 {
        assert!(
            start.elapsed().as_secs() < 30,
            "the compacted version was never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Catalogue writes over HTTP: off unless the server has a token.
    let delete_body = br#"{"keys": ["9000"]}"#;
    let (status, _, _) = http(addr, "DELETE", "/items", "application/json", delete_body);
    assert_eq!(status, 403);
    let token = "0123456789abcdef-test-token";
    let token_file = shop.dir.path().join("write.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let writer = start_server_with(
        &index,
        &[
            "--write-token-file",
            token_file.to_str().unwrap(),
            "--reload-every-s",
            "0",
        ],
    );
    let w = writer.addr.as_str();
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let rows_now = (150 - kiwis) as u64;
    // A product form: the first gallery image again, as new product 9000.
    let gallery = std::fs::read_to_string(root.join("gallery.csv")).unwrap();
    let first_image = gallery.lines().nth(1).unwrap().split(',').next().unwrap();
    let original = std::fs::read(root.join(first_image)).unwrap();
    let item_form = |photos: &[&[u8]], fields: &[(&str, &str)]| {
        let mut form = Vec::new();
        for (name, value) in fields {
            form.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        for photo in photos {
            form.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes());
            form.extend_from_slice(photo);
            form.extend_from_slice(b"\r\n");
        }
        form.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        form
    };
    let fields = [("label", "9000"), ("category", "Test")];
    let (status, _, _) = http(
        w,
        "POST",
        "/items?mode=add",
        &multipart,
        &item_form(&[&original], &fields),
    );
    assert_eq!(status, 401, "no token");
    // A form whose second photo is not an image: refused, and the first photo kept for it is
    // removed again (no orphan upload).
    let (status, _, body) = http_with_headers(
        w,
        "POST",
        "/items?mode=add",
        &auth,
        &multipart,
        &item_form(&[&original, b"not an image"], &fields),
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let uploads_now = || {
        std::fs::read_dir(index.join("uploads"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(uploads_now(), 0, "a refused form leaves no upload");
    let (status, _, body) = http_with_headers(
        w,
        "POST",
        "/items?mode=add",
        &auth,
        &multipart,
        &item_form(&[&original], &fields),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let added = json(&body);
    assert_eq!(
        (added["added"].as_u64(), added["rows"].as_u64()),
        (Some(1), Some(rows_now + 1)),
        "{added}"
    );
    // Prepared as `index build` prepares gallery images: its nearest item is its original.
    let (status, _, body) = http(
        w,
        "GET",
        &format!("/items/{rows_now}/similar?k=1"),
        "text/plain",
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let twin = json(&body);
    assert_eq!(twin["results"][0]["id"], 0, "{twin}");
    assert!(
        twin["results"][0]["score"].as_f64().unwrap() > 0.999,
        "{twin}"
    );
    // The re-upload is a near-duplicate of its original (`index dups` over HTTP).
    assert_eq!(http(w, "GET", "/index/dups", "text/plain", b"").0, 401);
    let (status, _, body) = http_with_headers(w, "GET", "/index/dups", &auth, "text/plain", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let dups = json(&body);
    let pair_found = dups["groups"].as_array().unwrap().iter().any(|g| {
        let ids: Vec<u64> = g
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_u64())
            .collect();
        ids.contains(&0) && ids.contains(&rows_now)
    });
    assert!(pair_found, "{dups}");
    let (_, _, body) = http(
        w,
        "POST",
        "/search?k=3&filter=label%3D9000",
        "image/jpeg",
        &photo,
    );
    let found = json(&body);
    assert_eq!(
        found["results"][0]["metadata"]["category"], "Test",
        "{found}"
    );
    // Upsert (the default mode) replaces product 9000's image; delete removes it; compact.
    let (status, _, body) = http_with_headers(
        w,
        "POST",
        "/items",
        &auth,
        &multipart,
        &item_form(&[&photo], &fields),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        (
            json(&body)["removed"].as_u64(),
            json(&body)["added"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // A product name where the index keys products by label is refused, not a silent 0.
    let (status, _, body) = http_with_headers(
        w,
        "DELETE",
        "/items",
        &auth,
        "application/json",
        br#"{"keys": ["kiwi"]}"#,
    );
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not a product label"), "{text}");
    let (status, _, body) = http_with_headers(
        w,
        "DELETE",
        "/items",
        &auth,
        "application/json",
        delete_body,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["removed"], 1);
    assert!(
        json(&body).get("unmatched_keys").is_none(),
        "every key matched"
    );
    // A key no image has (here, the product just deleted) is named in the reply.
    let (status, _, body) = http_with_headers(
        w,
        "DELETE",
        "/items",
        &auth,
        "application/json",
        br#"{"keys": ["9000", "9001"]}"#,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["removed"], 0);
    assert_eq!(
        json(&body)["unmatched_keys"],
        serde_json::json!(["9000", "9001"])
    );
    let (status, _, body) =
        http_with_headers(w, "POST", "/index/compact", &auth, "text/plain", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["rows"].as_u64(), Some(rows_now));
    assert_eq!(
        uploads_now(),
        2,
        "both photos are kept; nothing deletes a user's file"
    );
}

/// `index calibrate` measures a threshold on labelled queries and stores it; the service then
/// names the top hit as the match only at or above it, and answers `"match": null` (still
/// listing the nearest items) below it.
#[test]
fn a_calibrated_index_says_when_a_product_is_not_in_the_catalogue() {
    use visual_search_retrieval::index::Index;
    let Some(shop) = common::grocery_shop() else {
        return;
    };
    let grocery = &shop.grocery;
    let (index, _) = shop.index();
    let queries = common::query_list(&shop.root, grocery, 15);
    let text = common::calibrate(
        &["--index", index.to_str().unwrap()],
        &queries,
        &["--holdout-products", "0.25"],
    );
    assert!(
        text.contains("absent after hiding 10 of 40 products")
            && text.contains("stored match threshold"),
        "{text}"
    );
    let stored = Index::open(&index).unwrap().meta.match_threshold.unwrap();
    assert!(stored.auroc > 0.5 && stored.precision >= 0.9, "{stored:?}");
    let kiwi = std::fs::read(grocery.join("test/Fruit/Kiwi/Kiwi_005.jpg")).unwrap();
    let search = |server: &common::Server| {
        let (status, _, body) = http(&server.addr, "POST", "/search?k=3", "image/jpeg", &kiwi);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        json(&body)
    };
    let mut server = start_server(&index);
    let found = search(&server);
    let top = found["results"][0]["score"].as_f64().unwrap();
    assert_eq!(
        found["match_threshold"].as_f64().map(|t| t as f32),
        Some(stored.score)
    );
    if top >= stored.score as f64 {
        assert_eq!(found["match"], found["results"][0], "{found}");
    } else {
        assert!(found["match"].is_null(), "{found}");
    }
    server.terminate(std::time::Duration::from_secs(10));

    // A threshold above this photo's best score: not in the catalogue, nearest items listed.
    let strict = visual_search_retrieval::open_set::MatchThreshold {
        score: top as f32 + 0.01,
        ..stored
    };
    Index::open(&index)
        .unwrap()
        .set_match_threshold(Some(strict))
        .unwrap();
    let server = start_server(&index);
    let absent = search(&server);
    assert!(
        absent["match"].is_null() && absent.get("match").is_some(),
        "{absent}"
    );
    assert_eq!(absent["results"].as_array().unwrap().len(), 3, "{absent}");
    assert_eq!(absent["results"][0]["score"], found["results"][0]["score"]);
    // A search by catalogue item has no verdict.
    let (_, _, body) = http(
        &server.addr,
        "GET",
        "/items/3/similar?k=2",
        "text/plain",
        b"",
    );
    assert!(json(&body).get("match").is_none());
    let cli = run_ok(&[
        "search",
        "--index",
        index.to_str().unwrap(),
        "--device",
        "flex",
        "--k",
        "3",
        grocery
            .join("test/Fruit/Kiwi/Kiwi_005.jpg")
            .to_str()
            .unwrap(),
    ]);
    assert!(cli.contains("match: none, not in the catalogue"), "{cli}");
}

/// A multipart body with one `image` field per photo.
fn multipart_form(boundary: &str, photos: &[&[u8]]) -> Vec<u8> {
    let mut form = Vec::new();
    for photo in photos {
        form.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
            )
            .as_bytes(),
        );
        form.extend_from_slice(photo);
        form.extend_from_slice(b"\r\n");
    }
    form.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    form
}

/// Stalled and idle connections are closed after the header timeout, trickled bodies after the
/// body timeout, clients that do not read their answers after the send timeout, unfinished
/// uploads hold at most the body memory budget, connections beyond the cap are refused without starving the others, and
/// SIGTERM drains and exits.
#[test]
fn slow_and_idle_connections_time_out_and_sigterm_drains() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let Some((grocery, _)) = common::grocery_and_lite0() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = catalogue(dir.path(), &grocery, 100);
    let index = dir.path().join("tiny.index");
    run_ok(&[
        "index",
        "build",
        "--model",
        "tiny_resnet",
        "--device",
        "flex",
        "--follow-links",
        "--csv",
        root.join("gallery.csv").to_str().unwrap(),
        "--out",
        index.to_str().unwrap(),
    ]);
    let mut server = start_server_with(
        &index,
        &[
            "--header-timeout-s",
            "1",
            "--body-timeout-s",
            "2",
            "--send-timeout-s",
            "2",
            "--max-body-memory-mb",
            "8",
            "--max-connections",
            "20",
            "--drain-timeout-s",
            "2",
        ],
    );
    let addr = server.addr.clone();
    // A half-sent request head is cut off after the header timeout.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let n = stalled.read(&mut buf).unwrap_or(0);
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "a stalled head was held for {waited:?}"
    );
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.contains("408"), "{text}");
    // More idle connections than the cap: the server stays reachable once they time out.
    let idle: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _, body) = http(&addr, "GET", "/healthz", "text/plain", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    drop(idle);
    // As many bodies trickled a byte at a time as the cap allows: each is cut off at the body
    // deadline (408, connection closed), so the server is reachable again after it.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(
                b"POST /search/vector HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 100000\r\n\r\n{",
            )
            .unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        for s in &mut slow {
            let _ = s.write_all(b" ");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (status, _, body) = http(&addr, "GET", "/healthz", "text/plain", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut answer = Vec::new();
    slow[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = slow[0].read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("did not arrive within 2 s"),
        "{answer}"
    );
    drop(slow);
    // Unfinished uploads hold at most --max-body-memory-mb in all: the one that would pass it
    // is answered 503, and the budget is given back when their connections go.
    let unfinished = |bytes: usize| {
        let mut s = TcpStream::connect(&addr).unwrap();
        let head = "POST /search/vector HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Content-Length: 4000000\r\n\r\n";
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(&vec![b' '; bytes]);
        s
    };
    let holding: Vec<TcpStream> = (0..2).map(|_| unfinished(3_000_000)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut third = unfinished(3_000_000);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("retry-after: 1"),
        "{answer}"
    );
    drop(holding);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _, body) = http(
        &addr,
        "POST",
        "/search/vector",
        "application/json",
        &vec![b' '; 3_000_000],
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // A client that asks and never reads: its answers stop being written after the send
    // timeout and the connection is closed, long before all of them were sent.
    let deaf = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    deaf.set_recv_buffer_size(4096).unwrap();
    let to: std::net::SocketAddr = addr.parse().unwrap();
    deaf.connect(&to.into()).unwrap();
    let mut deaf: TcpStream = deaf.into();
    let asked = 2000; // 2.4 kB each: more than the server's send buffer (4 MB at most) holds
    let request = b"GET /items/0/similar?k=1000 HTTP/1.1\r\nHost: x\r\n\r\n";
    deaf.write_all(&request.repeat(asked)).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    deaf.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answers = Vec::new();
    let _ = deaf.read_to_end(&mut answers);
    let answered = String::from_utf8_lossy(&answers)
        .matches("HTTP/1.1 200")
        .count();
    assert!(
        answered < asked,
        "all {asked} answers ({} bytes) were sent to a client that did not read",
        answers.len()
    );
    let (status, _, body) = http(&addr, "GET", "/healthz", "text/plain", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // SIGTERM: the server drains and exits on its own.
    let status = server.terminate(Duration::from_secs(8));
    assert!(
        status.is_some_and(|s| s.success()),
        "serve did not exit cleanly on SIGTERM: {status:?}"
    );
}

/// A list whose image is a symlink out of the root cannot put that file in an index (and so on
/// `/images/{id}`), unless the user says the link is theirs.
#[test]
fn index_build_refuses_a_symlink_out_of_the_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"not a photo").unwrap();
    let root = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("a.jpg")).unwrap();
    std::fs::write(
        root.path().join("gallery.csv"),
        "img_path,product_id\na.jpg,1\n",
    )
    .unwrap();
    let out = common::bin()
        .args([
            "index",
            "build",
            "--model",
            "tiny_resnet",
            "--device",
            "flex",
        ])
        .arg("--csv")
        .arg(root.path().join("gallery.csv"))
        .arg("--out")
        .arg(root.path().join("index"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("a.jpg") && text.contains("outside the list's root"),
        "{text}"
    );
    assert!(!root.path().join("index").exists());
}

/// `index dups` groups a photo with its resized, re-encoded copy and nothing else among
/// different photos (of the same products too), and writes the groups as CSV.
#[test]
fn index_dups_finds_a_resized_copy() {
    let Some((grocery, weights)) = common::grocery_and_lite0() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    std::fs::create_dir_all(&root).unwrap();
    let photos = [
        "test/Fruit/Kiwi/Kiwi_001.jpg",
        "test/Fruit/Kiwi/Kiwi_010.jpg",
        "test/Fruit/Banana/Banana_001.jpg",
        "test/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_003.jpg",
        "test/Vegetables/Pepper/Red-Bell-Pepper/Red-Bell-Pepper_004.jpg",
    ];
    let mut csv = String::from("img_path,product_id\n");
    for (i, p) in photos.iter().enumerate() {
        std::fs::copy(grocery.join(p), root.join(format!("{i}.jpg"))).unwrap();
        csv += &format!("{i}.jpg,{i}\n");
    }
    let original = image::open(grocery.join(photos[3])).unwrap();
    original
        .resize(
            original.width() * 7 / 10,
            original.height() * 7 / 10,
            image::imageops::FilterType::Triangle,
        )
        .save(root.join("copy.jpg"))
        .unwrap();
    csv += "copy.jpg,3\n";
    std::fs::write(root.join("gallery.csv"), csv).unwrap();
    let index = dir.path().join("index");
    lite0_build(&root, &weights, &["--out", index.to_str().unwrap()]);
    let groups = dir.path().join("groups.csv");
    let text = run_ok(&[
        "index",
        "dups",
        "--index",
        index.to_str().unwrap(),
        "--out",
        groups.to_str().unwrap(),
    ]);
    assert!(
        text.contains("1 groups of near-duplicates (2 of 6 images)"),
        "{text}"
    );
    let written = std::fs::read_to_string(&groups).unwrap();
    let rows: Vec<&str> = written.lines().collect();
    assert_eq!(rows[0], "group,id,label,path", "{written}");
    assert!(
        rows.len() == 3 && rows[1].starts_with("1,3,3,") && rows[2].starts_with("1,5,3,"),
        "{written}"
    );
}

/// `index compact` killed at every stage of its write leaves an index that opens as the old
/// version (tombstones and all) or the new one, never a mix; the next write sweeps what the
/// killed one left.
#[test]
fn a_killed_compact_leaves_the_old_version_or_the_new() {
    use visual_search_retrieval::index::{Index, IndexItem, build_index};
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("big.index");
    let (rows, dim) = (200_000, 48);
    let items: Vec<IndexItem> = (0..rows)
        .map(|i| IndexItem::new((i / 2) as i64, format!("img/{i}.jpg")))
        .collect();
    let emb: Vec<f32> = (0..rows * dim).map(|i| ((i % 97) as f32) / 97.0).collect();
    let meta = common::synthetic_meta(dim, 32);
    build_index(&idx, meta, &items, &emb).unwrap();
    let keys: std::collections::HashSet<String> = (0..1000).map(|k| (k * 7).to_string()).collect();
    let deleted = Index::open(&idx).unwrap().delete_keys(&keys).unwrap();
    assert_eq!((deleted.rows, deleted.unmatched.len()), (2000, 0));
    let mut delay_ms = 1u64;
    loop {
        let mut child = common::bin()
            .args(["index", "compact", "--index", idx.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        eprintln!("compact killed after {delay_ms} ms (finished: {finished})");
        let index = Index::open(&idx).unwrap_or_else(|e| panic!("after {delay_ms} ms: {e}"));
        let state = (index.meta.rows, index.deleted_rows());
        assert!(
            state == (rows, 2000) || state == (rows - 2000, 0),
            "killed after {delay_ms} ms: {state:?}"
        );
        if state.1 == 0 {
            assert_eq!(index.items[0], items[2], "rows renumbered past product 0");
            break;
        }
        assert!(!finished, "compact finished but the index is unchanged");
        assert!(delay_ms < 60_000, "compact never finished");
        delay_ms = delay_ms * 3 / 2 + 1;
    }
    // Whatever a killed run left is swept by the next write.
    Index::open(&idx)
        .unwrap()
        .delete_keys(&["1".to_string()].into())
        .unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(&idx)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
