//! Helpers shared by the CLI's end-to-end tests: running the built binary, a small catalogue
//! cut from the grocery data, and a `serve` process on a free port.
#![allow(dead_code)] // each test file uses a different subset

pub mod image_server;
pub mod pg_cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `visual-search` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_visual-search"))
}

/// Runs it and returns stdout + stderr, failing the test (with that text) on a non-zero exit.
pub fn run_ok(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}\n{text}");
    text
}

/// The grocery photos and the EfficientNet-Lite0 weights, or None (after saying SKIPPED).
pub fn grocery_and_lite0() -> Option<(PathBuf, PathBuf)> {
    match (
        visual_search_data::datasets::locate_grocery(),
        visual_search_model::pretrained::efficientnet_lite0_weights(),
    ) {
        (Some(g), Some(w)) => Some((g, w)),
        _ => {
            visual_search_data::datasets::missing_test_dependency(
                "grocery dataset or Lite0 weights not found",
            );
            None
        }
    }
}

/// Kills the server when the test ends, however it ends.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Server {
    /// Sends SIGTERM and waits (up to `within`) for the exit status.
    pub fn terminate(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` on the index at a free loopback port.
pub fn start_server(index: &Path) -> Server {
    start_server_with(index, &[])
}

/// `start_server` with more `serve` flags.
pub fn start_server_with(index: &Path, extra: &[&str]) -> Server {
    let mut child = bin()
        .args([
            "serve",
            "--index",
            index.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .args(["--device", "flex", "--max-body-mb", "8"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("serving"), "{line}");
    Server { child, addr }
}

/// A gallery list of every `step`-th row of the grocery gallery, reached through a symlink.
pub fn catalogue(dir: &Path, grocery: &Path, step: usize) -> PathBuf {
    let root = dir.join("shop");
    std::fs::create_dir_all(&root).unwrap();
    for sub in ["train", "val", "test", "iconic-images-and-descriptions"] {
        std::os::unix::fs::symlink(grocery.join(sub), root.join(sub)).unwrap();
    }
    let text = std::fs::read_to_string(grocery.join("gallery.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.step_by(step).collect();
    std::fs::write(
        root.join("gallery.csv"),
        format!("{header}\n{}\n", rows.join("\n")),
    )
    .unwrap();
    root
}

/// A grocery gallery line with a `category` column added: the top folder of its image
/// (`Fruit`, `Vegetables`, `Packages`); the header gains `category`.
pub fn with_category(line: &str) -> String {
    if line.starts_with("img_path,") {
        return format!("{line},category");
    }
    let path = line.split(',').next().unwrap_or_default();
    let category = path.split('/').nth(1).unwrap_or_default();
    format!("{line},{category}")
}

/// A temp folder with a grocery catalogue root in it (`catalogue(dir, grocery, 10)`), the
/// grocery data and the real Lite0 weights; `None` (after saying SKIPPED) without them.
pub struct Shop {
    pub dir: tempfile::TempDir,
    pub grocery: PathBuf,
    pub weights: PathBuf,
    pub root: PathBuf,
}

pub fn grocery_shop() -> Option<Shop> {
    let (grocery, weights) = grocery_and_lite0()?;
    let dir = tempfile::tempdir().unwrap();
    let root = catalogue(dir.path(), &grocery, 10);
    Some(Shop {
        dir,
        grocery,
        weights,
        root,
    })
}

impl Shop {
    /// `dir/index` built over the shop's catalogue (see [`lite0_index`]).
    pub fn index(&self) -> (PathBuf, String) {
        lite0_index(self.dir.path(), &self.root, &self.weights)
    }
}

/// `index calibrate` on flex of the index that `index` names (`--index …` and any engine
/// flags) with the labelled `queries`, plus `extra` flags; returns the output.
pub fn calibrate(index: &[&str], queries: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "index",
        "calibrate",
        "--device",
        "flex",
        "--follow-links",
        "--csv",
    ];
    args.push(queries.to_str().unwrap());
    args.extend_from_slice(index);
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// A query list (`root/queries.csv`) of every `step`-th row of the grocery dev queries, for
/// a root made by [`catalogue`].
pub fn query_list(root: &Path, grocery: &Path, step: usize) -> PathBuf {
    let text = std::fs::read_to_string(grocery.join("queries.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.step_by(step).collect();
    let path = root.join("queries.csv");
    std::fs::write(&path, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    path
}

/// Builds `dir/index` over `root/gallery.csv` with the real EfficientNet-Lite0 `weights`;
/// returns the index folder and the command's output.
pub fn lite0_index(dir: &Path, root: &Path, weights: &Path) -> (PathBuf, String) {
    let index = dir.join("index");
    let text = lite0_build(root, weights, &["--out", index.to_str().unwrap()]);
    (index, text)
}

/// `index build` of `root/gallery.csv` with the real EfficientNet-Lite0 `weights` into the
/// destination `target` names (`--out DIR`, `--index URL --table T`, …); returns the output.
pub fn lite0_build(root: &Path, weights: &Path, target: &[&str]) -> String {
    let mut args = vec![
        "index",
        "build",
        "--model",
        "efficientnet_lite0",
        "--weights",
        weights.to_str().unwrap(),
        "--device",
        "flex",
        "--follow-links",
        "--csv",
    ];
    let csv = root.join("gallery.csv");
    args.push(csv.to_str().unwrap());
    args.extend_from_slice(target);
    run_ok(&args)
}

/// One HTTP/1.1 request; returns (status, headers, body). A body the server refuses early may
/// not be sent completely, so write errors after the headers are ignored.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    http_with_headers(addr, method, path, &[], content_type, body)
}

/// [`http`] with more request headers (`("Authorization", "Bearer …")`).
pub fn http_with_headers(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    for chunk in body.chunks(1 << 20).take(4) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers[9..12].parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
}

/// Where the kiwi photo is pasted in the scene.
pub const KIWI_AT: (u32, u32) = (300, 260);

/// A 700 × 740 scene tiled 4 × 4 with sixteen other in-store photos (every 70th dev query of
/// another product), the kiwi photo pasted over them; returns the scene's path and the kiwi's
/// true box `[x, y, w, h]`.
pub fn kiwi_scene(grocery: &Path, dir: &Path) -> (PathBuf, [f64; 4]) {
    let open = |rel: &str| image::open(grocery.join(rel)).unwrap().to_rgb8();
    let queries = std::fs::read_to_string(grocery.join("queries.csv")).unwrap();
    let others: Vec<String> = queries
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            let (path, label) = (f.next()?, f.next()?);
            (label != "7").then(|| path.to_string())
        })
        .step_by(70)
        .take(16)
        .collect();
    assert_eq!(others.len(), 16);
    let mut canvas = image::RgbImage::new(700, 740);
    for (i, rel) in others.iter().enumerate() {
        let tile =
            image::imageops::resize(&open(rel), 175, 185, image::imageops::FilterType::Triangle);
        image::imageops::replace(
            &mut canvas,
            &tile,
            (i % 4) as i64 * 175,
            (i / 4) as i64 * 185,
        );
    }
    let kiwi = open("test/Fruit/Kiwi/Kiwi_005.jpg");
    let (w, h) = kiwi.dimensions();
    image::imageops::replace(&mut canvas, &kiwi, KIWI_AT.0 as i64, KIWI_AT.1 as i64);
    let path = dir.join("scene.jpg");
    canvas.save(&path).unwrap();
    (
        path,
        [KIWI_AT.0 as f64, KIWI_AT.1 as f64, w as f64, h as f64],
    )
}

/// The metadata of a synthetic index of `dim`-wide f32 rows (no model behind it) whose
/// queries would be `size` px.
pub fn synthetic_meta(dim: usize, size: usize) -> visual_search_retrieval::index::IndexMeta {
    visual_search_retrieval::index::IndexMeta::new(
        visual_search_retrieval::index::IndexDtype::F32,
        dim,
        serde_json::json!({"synthetic": true}),
        visual_search_retrieval::index::Preprocessing {
            size,
            mean: [0.5; 3],
            std: [0.5; 3],
        },
    )
}
