//! A loopback HTTP/1.1 image server for the mining tests (no internet): serves files under a
//! folder at `/img/<relative path>`, answers every `fail_every`-th request with 503 (a flaky
//! CDN), can be slowed down per request, and logs every path it served successfully.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct ImageServer {
    pub base: String,
    served: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl ImageServer {
    /// Serves `root`; `fail_every` = 10 fails 10% of requests (0 never fails).
    pub fn start(root: &Path, fail_every: u64, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, s, r, st) = (
            root.to_path_buf(),
            served.clone(),
            requests.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (root, s, r) = (root.clone(), s.clone(), r.clone());
                std::thread::spawn(move || handle(conn, &root, fail_every, delay, &s, &r));
            }
        });
        ImageServer {
            base,
            served,
            requests,
            stop,
        }
    }

    /// The URL of a file under the root.
    pub fn url(&self, rel: &str) -> String {
        format!("{}/img/{rel}", self.base)
    }

    /// URLs served with 200 so far, in order.
    pub fn served(&self) -> Vec<String> {
        let s = self.served.lock().unwrap();
        s.iter().map(|p| format!("{}{p}", self.base)).collect()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
    }
}

fn handle(
    mut conn: TcpStream,
    root: &Path,
    fail_every: u64,
    delay: Duration,
    served: &Mutex<Vec<String>>,
    requests: &AtomicU64,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
    std::thread::sleep(delay);
    let respond = |conn: &mut TcpStream, status: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body);
    };
    if fail_every > 0 && n.is_multiple_of(fail_every) {
        respond(&mut conn, "503 Service Unavailable", b"try again");
        return;
    }
    let file: Option<PathBuf> = path
        .strip_prefix("/img/")
        .filter(|rel| !rel.split('/').any(|p| p == ".." || p.is_empty()))
        .map(|rel| root.join(rel));
    match file.and_then(|f| std::fs::read(f).ok()) {
        Some(body) => {
            served.lock().unwrap().push(path);
            respond(&mut conn, "200 OK", &body);
        }
        None => respond(&mut conn, "404 Not Found", b"no such image"),
    }
}
