//! A throwaway PostgreSQL cluster built from the machine's server binaries: `initdb` into a
//! temporary directory, a free port on 127.0.0.1, stopped and removed on drop.
//!
//! The PostgreSQL server refuses to run as root. When Weir runs as root (containers, CI), the
//! server binaries run as the `postgres` system user through `runuser`, and the directory is
//! handed to that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};

pub struct Cluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// The OS user that runs the server, when not the current one.
    run_as: Option<String>,
    pub port: u16,
    /// Password of the `postgres` superuser (SCRAM-SHA-256).
    pub password: String,
    running: bool,
    /// The server's options (`pg_ctl -o`), to start it again after [`Cluster::stop`].
    server_opts: String,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Turn off fsync (tests): much faster, and a throwaway cluster loses nothing that matters.
    pub fast: bool,
}

/// Finds the PostgreSQL server binaries: `$WEIR_PG_BINDIR`, then `pg_config --bindir` if it
/// holds `initdb`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("WEIR_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return Ok(d);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, d)) => Ok(d),
        None => bail!("no PostgreSQL server binaries found (looked at $WEIR_PG_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin); install postgresql"),
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

impl Cluster {
    pub fn start(opts: Options) -> anyhow::Result<Cluster> {
        let bindir = bindir()?;
        let dir = tempfile::Builder::new().prefix("weir-pg-").tempdir()?;
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let st = Command::new("chown")
                .arg("-R")
                .arg(user)
                .arg(dir.path())
                .status()
                .context("chown of the cluster directory")?;
            if !st.success() {
                bail!(
                    "cannot hand {} to the {user} user (does it exist? `useradd -r postgres`)",
                    dir.path().display()
                );
            }
        }
        let password = crate::token::generate()?;
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        let mut c = Cluster {
            bindir,
            run_as,
            port: 0,
            password,
            running: false,
            server_opts: String::new(),
            dir,
        };
        c.chown(&pwfile)?;
        let data = c.data_dir();
        c.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                &format!("--pwfile={}", path_str(&pwfile)?),
            ],
        )?;
        std::fs::remove_file(&pwfile)?;
        c.port = free_port()?;
        let mut server_opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            c.port,
            path_str(c.dir.path())?
        );
        if opts.fast {
            server_opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        for (k, v) in &opts.settings {
            server_opts.push_str(&format!(" -c {k}={v}"));
        }
        c.server_opts = server_opts;
        c.start_again()?;
        Ok(c)
    }

    /// Starts the server again (same port, same data) after [`Cluster::stop`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let log = self.log_path();
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-o",
                &self.server_opts,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    fn chown(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(user) = &self.run_as {
            Command::new("chown").arg(user).arg(path).status()?;
        }
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    fn command(&self, program: &str) -> Command {
        let bin = self.bindir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let out = self
            .command(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(out)
    }

    /// A libpq connection string for the superuser, straight to the server.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={db}",
            self.port, self.password
        )
    }

    /// Runs SQL through psql as the superuser, stopping at the first error.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let psql = self.bindir.join("psql");
        let out = Command::new(psql)
            .arg(self.conninfo(db))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a SQL file through psql.
    pub fn psql_file(&self, db: &str, file: &Path) -> anyhow::Result<()> {
        let out = Command::new(self.bindir.join("psql"))
            .arg(self.conninfo(db))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(file)
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql -f {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if let Ok(data) = path_str(&self.data_dir()).map(str::to_owned) {
            let _ = self.run(
                "pg_ctl",
                &["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"],
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}
