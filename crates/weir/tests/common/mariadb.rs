//! A throwaway MariaDB server for the MySQL tests: its own datadir, socket and port, the
//! demo shop's data in database `shop`, a second database `other` a target must not reach,
//! and a general log that records every statement the server ran (the tests' oracle for
//! "what reached the upstream").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The account Weir logs in to MariaDB as (`weir`@`%` and `weir`@`127.0.0.1`).
pub const MARIADB_USER: &str = "weir";

pub struct Mariadb {
    pub port: u16,
    /// `weir`'s password (also in `password_file()`).
    pub password: String,
    /// Stopped first (fields drop in order), then its certificates go.
    server: weir::mariadb::Mariadb,
    /// Certificates and the password file (the server's own directory is `server.dir()`).
    pub dir: tempfile::TempDir,
}

impl Mariadb {
    /// Starts `weir::mariadb::Mariadb` with TLS and the general log, and seeds it.
    pub fn start() -> Mariadb {
        let dir = tempfile::Builder::new()
            .prefix("weir-mariadb-test-")
            .tempdir()
            .unwrap();
        certificates(dir.path());
        let file = |f: &str| dir.path().join(f).display().to_string();
        let server = weir::mariadb::Mariadb::start(weir::mariadb::Options {
            general_log: true,
            args: vec![
                format!("--ssl-ca={}", file("ca.pem")),
                format!("--ssl-cert={}", file("server.crt")),
                format!("--ssl-key={}", file("server.key")),
            ],
        })
        .unwrap();
        let password = format!("weir-upstream-{}", std::process::id());
        std::fs::write(dir.path().join("weir-password"), &password).unwrap();
        let m = Mariadb {
            port: server.port,
            password,
            server,
            dir,
        };
        m.sql(&seed(&m.password));
        m
    }

    /// Runs `script` as root (straight to the server, not through Weir) and returns what
    /// the client printed, or whatever it says when it fails.
    pub fn try_sql(&self, script: &str) -> Output {
        self.server
            .try_sql(script)
            .expect("mariadb client (scripts/prereqs installs mariadb-client)")
    }

    /// Runs `script` as root and returns stdout (tab-separated rows, no header); panics with
    /// the client's stderr if any statement fails.
    pub fn sql(&self, script: &str) -> String {
        let out = self.try_sql(script);
        assert!(
            out.status.success(),
            "mariadb failed running:\n{script}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every statement the server has run so far (`Query`, `Connect`, ... lines).
    pub fn general_log(&self) -> String {
        std::fs::read_to_string(self.server.dir().join("general.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.server.dir().join("error.log")).unwrap_or_default()
    }

    /// The CA that signed the server's certificate (for `localhost` and 127.0.0.1).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The file holding `weir`'s password.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("weir-password")
    }

    /// A `[[target]]` block for this server: database `shop`, user `weir`. Lines appended
    /// after it (`[target.tables."shop.customers"]`, ...) belong to this target.
    pub fn target_toml(&self, name: &str, environment: &str) -> String {
        format!(
            r#"
[[target]]
name = "{name}"
engine = "mysql"
environment = "{environment}"
upstream = "127.0.0.1:{port}"
database = "shop"
user = "{MARIADB_USER}"
password_file = "{file}"
"#,
            port = self.port,
            file = self.password_file().display()
        )
    }
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 in `dir` (ca.pem, server.crt,
/// server.key) and an unrelated CA (other-ca.pem), made with the openssl CLI as the PostgreSQL TLS tests do.
fn certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=weir test mariadb CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
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
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // A CA that signed nothing here: verify-full against it must fail.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=some other CA",
    ]);
}

/// What a user types: `mariadb -h 127.0.0.1 -P PORT -u USER -pTOKEN DB --batch -e SQL`.
/// Option files are read as for any user (none on this machine say anything for TCP).
pub fn mariadb_cli(port: u16, user: &str, token: &str, db: &str, sql: &str) -> Output {
    Command::new("mariadb")
        .args(["-h", "127.0.0.1", "-P", &port.to_string(), "-u", user])
        .arg(format!("-p{token}"))
        .arg(db)
        .args(["--batch", "-e", sql])
        .stdin(Stdio::null())
        .output()
        .expect("mariadb client (scripts/prereqs installs mariadb-client)")
}

/// Runs `script` with python3 (on stdin). PyMySQL and mysql-connector-python come from
/// scripts/test.
pub fn python(script: &str) -> Output {
    let mut child = Command::new("python3")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The accounts Weir uses, the demo shop (crates/weir/src/demo_seed_mysql.sql), and a second
/// database `other` that a target must not reach.
fn seed(password: &str) -> String {
    let shop = weir::mariadb::SHOP_SEED;
    format!(
        r#"
CREATE USER '{MARIADB_USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}');
CREATE USER '{MARIADB_USER}'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}');
GRANT ALL ON *.* TO '{MARIADB_USER}'@'%' WITH GRANT OPTION;
GRANT ALL ON *.* TO '{MARIADB_USER}'@'127.0.0.1' WITH GRANT OPTION;
-- An account that may log in only over TLS (the upstream_tls tests).
CREATE USER '{MARIADB_USER}tls'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}') REQUIRE SSL;
GRANT ALL ON shop.* TO '{MARIADB_USER}tls'@'127.0.0.1';

{shop}

CREATE DATABASE other;
CREATE TABLE other.secret (id int PRIMARY KEY, v text);
INSERT INTO other.secret VALUES (1, 'other-database-secret');
"#
    )
}
