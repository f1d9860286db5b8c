//! A throwaway MariaDB server: its own datadir, socket, tmpdir and 127.0.0.1 port, removed
//! when dropped. `weir demo` runs one behind its MySQL listener when the machine has the
//! MariaDB server binaries; the MySQL tests run one per test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The demo shop in MySQL syntax (database `shop`).
pub const SHOP_SEED: &str = include_str!("demo_seed_mysql.sql");

/// What a server is started with beyond the defaults.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Keep a general log (every statement the server ran) at `dir/general.log`.
    pub general_log: bool,
    /// More `mariadbd` arguments (TLS files, ...).
    pub args: Vec<String>,
}

pub struct Mariadb {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

/// `mariadbd` lives in /usr/sbin, which is not on every user's PATH.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

/// Small InnoDB files: given to the bootstrap too, so it does not write a 96 MiB redo log
/// that the first start then shrinks.
const SIZES: [&str; 2] = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M"];

impl Mariadb {
    /// Whether this machine has what [`Mariadb::start`] runs.
    pub fn available() -> bool {
        find("mariadbd").is_some()
            && find("mariadb-install-db").is_some()
            && find("mariadb").is_some()
    }

    /// Initialises a datadir, starts `mariadbd` on a free 127.0.0.1 port and waits until it
    /// answers over its socket. Root logs in over the socket only.
    pub fn start(opts: Options) -> anyhow::Result<Mariadb> {
        let server = find("mariadbd").context("mariadbd not found (install mariadb-server)")?;
        let dir = tempfile::Builder::new()
            .prefix("weir-mariadb-")
            .tempdir()
            .context("creating a directory for MariaDB")?;
        let data = dir.path().join("data");
        // The bootstrap server gets its own tmpdir: in the shared /tmp, parallel bootstraps
        // have failed deleting their internal temp tables ("Error on delete of
        // '/tmp/#sql-temptable-…'"). A failed bootstrap is retried once on a fresh datadir.
        let bootstrap = || -> anyhow::Result<Output> {
            let _ = std::fs::remove_dir_all(&data);
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg("--user=root")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", dir.path().display()))
                .args([
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ])
                .args(SIZES)
                .output()
                .context("running mariadb-install-db (install mariadb-server)")
        };
        let mut out = bootstrap()?;
        if !out.status.success() {
            out = bootstrap()?;
        }
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // Free ports are picked before they are bound: another process may take this one
        // meanwhile, and then the server exits saying so; it starts again on another.
        let error_log = dir.path().join("error.log");
        for attempt in 1..=5 {
            let port = crate::cluster::free_port()?;
            let _ = std::fs::remove_file(&error_log);
            let mut cmd = Command::new(&server);
            cmd.arg("--no-defaults")
                .arg("--user=root")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!(
                    "--socket={}",
                    dir.path().join("mysqld.sock").display()
                ))
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("mysqld.pid").display()
                ))
                .arg(format!("--log-error={}", error_log.display()))
                .arg(format!("--tmpdir={}", dir.path().display()))
                .args(SIZES)
                .args([
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--skip-slave-start",
                    "--performance-schema=off",
                    "--innodb-flush-log-at-trx-commit=2",
                    "--innodb-doublewrite=0",
                    "--innodb-fast-shutdown=2",
                    "--innodb-buffer-pool-dump-at-shutdown=0",
                    "--innodb-buffer-pool-load-at-startup=0",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_general_ci",
                ]);
            if opts.general_log {
                cmd.arg("--general-log").arg(format!(
                    "--general-log-file={}",
                    dir.path().join("general.log").display()
                ));
            }
            let child = cmd
                .args(&opts.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting mariadbd")?;
            let mut child = child;
            match wait_ready(&mut child, dir.path(), Duration::from_secs(60)) {
                Ok(()) => return Ok(Mariadb { port, dir, child }),
                Err(e) => {
                    let log = tail(&error_log, 30);
                    stop(&mut child);
                    if log.contains("Address already in use") && attempt < 5 {
                        continue;
                    }
                    bail!("{e}; error.log:\n{log}");
                }
            }
        }
        bail!("mariadbd found no free port in 5 attempts")
    }

    /// The directory everything of this server lives in (datadir, socket, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `mariadb` as root over this server's socket, reading no option files.
    pub fn socket_cmd(&self) -> Command {
        socket_cmd(self.dir())
    }

    /// Runs `script` as root (straight to the server) and returns what the client printed.
    pub fn try_sql(&self, script: &str) -> anyhow::Result<Output> {
        let mut child = self
            .socket_cmd()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running the mariadb client (install mariadb-client)")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs `script` as root and returns stdout (tab-separated rows, no header).
    pub fn sql(&self, script: &str) -> anyhow::Result<String> {
        let out = self.try_sql(script)?;
        if !out.status.success() {
            bail!(
                "mariadb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `mariadb` as root over the socket in `dir`, reading no option files.
fn socket_cmd(dir: &Path) -> Command {
    let mut c = Command::new("mariadb");
    c.arg("--no-defaults")
        .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
        .args(["-u", "root", "--batch", "--skip-column-names"]);
    c
}

fn wait_ready(child: &mut Child, dir: &Path, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("mariadbd exited with {status}");
        }
        let answered = socket_cmd(dir)
            .args(["-e", "select 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if answered {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("mariadbd did not accept connections within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        stop(&mut self.child);
        // `dir` (the datadir with it) is removed when the field drops, after this.
    }
}
