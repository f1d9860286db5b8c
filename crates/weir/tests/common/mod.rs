//! Test harness: a throwaway PostgreSQL cluster with the real `weir serve` binary in front.
//! Every test talks to both over 127.0.0.1 with real clients.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use weir::cluster::{Cluster, Options};

pub mod mariadb;

pub const ALICE_TOKEN: &str = "alice-test-token";
pub const BOB_TOKEN: &str = "bob-test-token-2";

pub struct Gateway {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The MySQL listener's port (`[gateway] mysql_listen`), when the gateway has one.
    pub mysql_port: Option<u16>,
    child: Option<Child>,
    pub config: PathBuf,
}

pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with(
            Options {
                fast: true,
                ..Default::default()
            },
            "",
        )
    }

    /// Starts a cluster with database `app`, and the gateway with target `app` in front.
    /// `extra` is appended to the config file.
    pub fn start_with(opts: Options, extra: &str) -> Gateway {
        Gateway::start_custom(opts, |_, _| extra.to_owned())
    }

    /// Like `start_with`, but `setup` runs against the cluster first and returns the extra
    /// config text; it gets the directory the config file will live in.
    pub fn start_custom(opts: Options, setup: impl FnOnce(&Cluster, &Path) -> String) -> Gateway {
        Gateway::start_inner(opts, None, setup)
    }

    /// The usual gateway (cluster, target `app`) plus a MySQL listener on a free port
    /// (`mysql_port`) and `m` as target `shopmy` (engine mysql, database `shop`, environment
    /// development).
    pub fn start_with_mariadb(m: &mariadb::Mariadb) -> Gateway {
        Gateway::start_mariadb_custom(
            m,
            Options {
                fast: true,
                ..Default::default()
            },
            |_, _| String::new(),
        )
    }

    /// Like `start_with_mariadb`, with `setup` as in `start_custom`: its text follows the
    /// `shopmy` target, so `[target.tables."shop.customers"]` lines there tag that target.
    pub fn start_mariadb_custom(
        m: &mariadb::Mariadb,
        opts: Options,
        setup: impl FnOnce(&Cluster, &Path) -> String,
    ) -> Gateway {
        let target = m.target_toml("shopmy", "development");
        Gateway::start_inner(opts, Some(target), setup)
    }

    fn start_inner(
        opts: Options,
        mysql_target: Option<String>,
        setup: impl FnOnce(&Cluster, &Path) -> String,
    ) -> Gateway {
        let cluster = Cluster::start(opts).expect("cluster");
        cluster.psql("postgres", "CREATE DATABASE app").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("weir-test-")
            .tempdir()
            .unwrap();
        let mut extra = setup(&cluster, dir.path());
        let mysql_port = mysql_target.map(|target| {
            extra = format!("{target}{extra}");
            weir::cluster::free_port().unwrap()
        });
        let mysql_listen = mysql_port
            .map(|p| format!("mysql_listen = \"127.0.0.1:{p}\"\n"))
            .unwrap_or_default();
        std::fs::write(dir.path().join("upstream-password"), &cluster.password).unwrap();
        let port = weir::cluster::free_port().unwrap();
        let config = dir.path().join("weir.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[gateway]
postgres_listen = "127.0.0.1:{port}"
{mysql_listen}store = "sqlite://weir.db"

[[identity.static]]
name = "alice"
kind = "human"
groups = ["developers"]
token = "{ALICE_TOKEN}"

[[identity.static]]
name = "bob"
kind = "human"
groups = ["dba"]
token = "{BOB_TOKEN}"

[[target]]
name = "app"
engine = "postgres"
environment = "development"
upstream = "127.0.0.1:{pg}"
database = "app"
user = "postgres"
password_file = "upstream-password"
{extra}
"#,
                pg = cluster.port
            ),
        )
        .unwrap();
        let mut g = Gateway {
            cluster,
            dir,
            port,
            mysql_port,
            child: None,
            config,
        };
        g.spawn();
        g
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weir.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(weir_bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("WEIR_CLOCK_FILE", self.clock_file())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weir serve");
        self.child = Some(child);
        let logged_before = self.log().matches("weir is listening").count();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Ready when *this* process says it listens: a port that accepts connections may be
        // another test's gateway (free ports are picked before they are bound, so two tests
        // can pick the same one).
        while self.log().matches("weir is listening").count() == logged_before {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = self.log();
                    if log.contains("cannot listen on") {
                        // Someone took the port meanwhile: move to another and start again.
                        let old = format!("127.0.0.1:{}", self.port);
                        self.port = weir::cluster::free_port().unwrap();
                        let mut config = std::fs::read_to_string(&self.config)
                            .unwrap()
                            .replace(&old, &format!("127.0.0.1:{}", self.port));
                        if let Some(p) = self.mysql_port.as_mut() {
                            let old = format!("mysql_listen = \"127.0.0.1:{p}\"");
                            *p = weir::cluster::free_port().unwrap();
                            config =
                                config.replace(&old, &format!("mysql_listen = \"127.0.0.1:{p}\""));
                        }
                        std::fs::write(&self.config, config).unwrap();
                        return self.spawn();
                    }
                    panic!("weir serve exited with {status}:\n{log}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "weir serve did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(TcpStream::connect(("127.0.0.1", self.port)).is_ok());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether `weir serve` is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// libpq connection string through the gateway.
    pub fn conninfo(&self, user: &str, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=app user={user} password={token} sslmode=disable",
            self.port
        )
    }

    pub fn alice(&self) -> String {
        self.conninfo("alice", ALICE_TOKEN)
    }

    /// Runs psql through the gateway with `script` on stdin.
    pub fn psql(&self, conninfo: &str, script: &str) -> Output {
        let mut child = Command::new(self.cluster.bindir().join("psql"))
            .arg(conninfo)
            .args(["-X", "-v", "ON_ERROR_STOP=0", "-At"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(self.dir.path())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn weir(&self, args: &[&str]) -> Output {
        Command::new(weir_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("WEIR_CLOCK_FILE", self.clock_file())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    /// The file that offsets the gateway's (and the CLI's) clock: time-based behaviour is
    /// tested by moving it, not by sleeping.
    pub fn clock_file(&self) -> PathBuf {
        self.dir.path().join("clock-offset")
    }

    /// Moves the clock `secs` seconds ahead of real time (from now on).
    pub fn set_clock_offset(&self, secs: i64) {
        std::fs::write(self.clock_file(), secs.to_string()).unwrap();
    }

    pub async fn connect(
        &self,
        user: &str,
        token: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conninfo(user, token), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Audit events written so far, parsed from the log.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| l.find("weir::audit: ").map(|i| &l[i + 13..]))
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect()
    }

    /// Kills `weir serve` with SIGKILL (no chance to flush anything) and waits for it.
    pub fn kill9(&mut self) {
        let child = self.child.as_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts `weir serve` again with the same config (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            assert!(Instant::now() < deadline, "weir did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Gateway {
    /// The secrets this gateway knows: every `token = "…"` of its config (static
    /// identities), the upstream password, and any Weir-generated token (`weir_` and 43
    /// base64url characters) — none may appear in its log.
    fn secrets_in_log(&self) -> Vec<String> {
        let log = self.log();
        let mut secrets: Vec<String> = std::fs::read_to_string(&self.config)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("token = \""))
            .filter_map(|rest| rest.strip_suffix('"'))
            .map(str::to_owned)
            .collect();
        secrets.push(self.cluster.password.clone());
        let mut found: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= 8 && log.contains(s.as_str()))
            .collect();
        let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        for (i, _) in log.match_indices("weir_") {
            let tail: String = log[i + 5..].chars().take_while(|c| b64(*c)).collect();
            if tail.len() >= 43 {
                found.push(format!("weir_{tail}"));
            }
        }
        found
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Every test that runs a gateway checks its whole log for the secrets it used.
        if !std::thread::panicking() {
            let found = self.secrets_in_log();
            assert!(
                found.is_empty(),
                "secrets in the gateway's log {}: {found:?}",
                self.log_path().display()
            );
        }
    }
}

/// Raw TCP to the gateway, for protocol-level tests.
pub fn raw(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until EOF (or timeout) and returns everything.
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A minimal protocol-level client built on `weir-wire`, for tests that need exact control
/// of the messages (what no driver would send).
pub struct RawClient {
    pub stream: TcpStream,
    buf: bytes::BytesMut,
}

impl RawClient {
    /// Connects and authenticates as `user` with `token` to database `db`.
    pub fn connect(port: u16, user: &str, token: &str, db: &str) -> RawClient {
        use weir_wire::startup::StartupPacket;
        let mut c = RawClient {
            stream: raw(port),
            buf: bytes::BytesMut::new(),
        };
        let mut out = bytes::BytesMut::new();
        StartupPacket::Startup {
            minor: 0,
            params: vec![("user".into(), user.into()), ("database".into(), db.into())],
        }
        .encode(&mut out);
        c.stream.write_all(&out).unwrap();
        let auth = c.recv();
        assert!(
            matches!(
                auth,
                weir_wire::backend::Message::Authentication(
                    weir_wire::backend::Authentication::CleartextPassword
                )
            ),
            "{auth:?}"
        );
        let mut pw = token.as_bytes().to_vec();
        pw.push(0);
        c.send(&[weir_wire::frontend::Message::Password(bytes::Bytes::from(
            pw,
        ))]);
        c.until_ready();
        c
    }

    pub fn send(&mut self, msgs: &[weir_wire::frontend::Message]) {
        let mut out = bytes::BytesMut::new();
        for m in msgs {
            m.encode(&mut out);
        }
        self.stream.write_all(&out).unwrap();
    }

    /// Reads one backend message (panics on EOF).
    pub fn recv(&mut self) -> weir_wire::backend::Message {
        loop {
            if let Some(h) = weir_wire::Header::parse(&self.buf, 1 << 30).unwrap() {
                if self.buf.len() >= h.frame_len() {
                    let frame = self.buf.split_to(h.frame_len()).freeze();
                    return weir_wire::backend::Message::decode(h.tag, frame.slice(5..)).unwrap();
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads up to and including ReadyForQuery; returns everything before it and the status.
    pub fn until_ready(
        &mut self,
    ) -> (
        Vec<weir_wire::backend::Message>,
        weir_wire::backend::TxStatus,
    ) {
        let mut msgs = Vec::new();
        loop {
            match self.recv() {
                weir_wire::backend::Message::ReadyForQuery(s) => return (msgs, s),
                m => msgs.push(m),
            }
        }
    }
}

/// Parse, Bind and Execute of `sql` as the unnamed statement and portal, with no
/// parameters and text results: one extended-protocol run, without its Sync or Flush.
pub fn run_unnamed(sql: &'static str) -> [weir_wire::frontend::Message; 3] {
    use bytes::Bytes;
    use weir_wire::frontend::{Bind, Message as F, Parse};
    [
        F::Parse(Parse {
            name: Bytes::new(),
            query: Bytes::from_static(sql.as_bytes()),
            param_types: vec![],
        }),
        F::Bind(Bind {
            portal: Bytes::new(),
            statement: Bytes::new(),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }),
        F::Execute {
            portal: Bytes::new(),
            max_rows: 0,
        },
    ]
}

/// The SQLSTATE and message of the first ErrorResponse among `msgs`.
pub fn first_error(msgs: &[weir_wire::backend::Message]) -> Option<(String, String)> {
    msgs.iter().find_map(|m| match m {
        weir_wire::backend::Message::ErrorResponse(f) => Some((
            f.code().unwrap_or("").to_owned(),
            String::from_utf8_lossy(f.get(b'M').map(|b| b.as_ref()).unwrap_or(b"")).into_owned(),
        )),
        _ => None,
    })
}
