//! A throwaway MariaDB server for the MySQL tests: its own datadir, socket and port, the
//! demo shop's data in database `shop`, a second database `other` a target must not reach,
//! and a general log that records every statement the server ran (the tests' oracle for
//! "what reached the upstream").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The account Weir logs in to MariaDB as (`weir`@`%` and `weir`@`127.0.0.1`).
pub const MARIADB_USER: &str = "weir";

pub struct Mariadb {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// `weir`'s password (also in `password_file()`).
    pub password: String,
    child: Child,
}

/// `mariadbd` lives in /usr/sbin, which is not on every user's PATH.
fn server_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("mariadbd"))
        .find(|p| p.is_file())
        .expect("mariadbd not found (scripts/prereqs installs mariadb-server)")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Mariadb {
    /// Initialises a datadir, starts `mariadbd` on a free 127.0.0.1 port and seeds it.
    pub fn start() -> Mariadb {
        let dir = tempfile::Builder::new()
            .prefix("weir-mariadb-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        // The innodb sizes are given to the bootstrap too, so it does not write a 96 MiB redo
        // log that the first start then shrinks.
        let sizes = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M"];
        // The bootstrap server gets its own tmpdir: in the shared /tmp, parallel bootstraps
        // have failed deleting their internal temp tables ("Error on delete of
        // '/tmp/#sql-temptable-…'"). A failed bootstrap is retried once on a fresh datadir.
        let bootstrap = || {
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
                .args(sizes)
                .output()
                .expect("mariadb-install-db (scripts/prereqs installs mariadb-server)")
        };
        let mut out = bootstrap();
        if !out.status.success() {
            out = bootstrap();
        }
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        certificates(dir.path());
        let password = format!("weir-upstream-{}", std::process::id());
        std::fs::write(dir.path().join("weir-password"), &password).unwrap();

        // Free ports are picked before they are bound: another test may take this one
        // meanwhile, and then the server exits saying so; it starts again on another.
        let mut attempt = 0;
        let (port, child) = loop {
            attempt += 1;
            let port = weir::cluster::free_port().unwrap();
            let error_log = dir.path().join("error.log");
            let _ = std::fs::remove_file(&error_log);
            let mut child = Command::new(server_bin())
                .arg("--no-defaults")
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
                .arg("--general-log")
                .arg(format!(
                    "--general-log-file={}",
                    dir.path().join("general.log").display()
                ))
                .arg(format!("--log-error={}", error_log.display()))
                .arg(format!("--tmpdir={}", dir.path().display()))
                .arg(format!("--ssl-ca={}", dir.path().join("ca.pem").display()))
                .arg(format!(
                    "--ssl-cert={}",
                    dir.path().join("server.crt").display()
                ))
                .arg(format!(
                    "--ssl-key={}",
                    dir.path().join("server.key").display()
                ))
                .args(sizes)
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
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mariadbd");
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut started = false;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = tail(&error_log, 30);
                    if log.contains("Address already in use") && attempt < 5 {
                        break;
                    }
                    panic!("mariadbd exited with {status}; error.log:\n{log}");
                }
                if Self::socket_cmd(dir.path())
                    .args(["-e", "select 1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    started = true;
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mariadbd did not accept connections within 60 s; error.log:\n{}",
                        tail(&error_log, 30)
                    );
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            if started {
                break (port, child);
            }
        };
        let m = Mariadb {
            port,
            dir,
            password,
            child,
        };
        m.sql(&seed(&m.password));
        m
    }

    /// `mariadb` as root over this server's socket, reading no option files.
    fn socket_cmd(dir: &Path) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .args(["-u", "root", "--batch", "--skip-column-names"]);
        c
    }

    /// Runs `script` as root (straight to the server, not through Weir) and returns what
    /// the client printed, or whatever it says when it fails.
    pub fn try_sql(&self, script: &str) -> Output {
        let mut child = Self::socket_cmd(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mariadb client (scripts/prereqs installs mariadb-client)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
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
        std::fs::read_to_string(self.dir.path().join("general.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
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

impl Drop for Mariadb {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // `dir` (the datadir with it) is removed when the field drops, after this.
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

/// The demo shop (crates/weir/src/demo_seed.sql) in MySQL syntax, smaller: 300 customers,
/// 50 products, 1000 orders; the same columns and the same kinds of values.
fn seed(password: &str) -> String {
    format!(
        r#"
CREATE USER '{MARIADB_USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}');
CREATE USER '{MARIADB_USER}'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}');
GRANT ALL ON *.* TO '{MARIADB_USER}'@'%' WITH GRANT OPTION;
GRANT ALL ON *.* TO '{MARIADB_USER}'@'127.0.0.1' WITH GRANT OPTION;
-- An account that may log in only over TLS (the upstream_tls tests).
CREATE USER '{MARIADB_USER}tls'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}') REQUIRE SSL;
GRANT ALL ON shop.* TO '{MARIADB_USER}tls'@'127.0.0.1';

CREATE DATABASE shop;
USE shop;
CREATE TABLE customers (
    id           int AUTO_INCREMENT PRIMARY KEY,
    full_name    varchar(200) NOT NULL,
    email        varchar(255) NOT NULL UNIQUE,
    phone        varchar(50),
    ssn          varchar(20),
    card_number  varchar(30),
    address      text,
    birth_date   date,
    notes        text,
    created_at   timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE products (
    id           int AUTO_INCREMENT PRIMARY KEY,
    sku          varchar(20) NOT NULL UNIQUE,
    name         varchar(200) NOT NULL,
    price_cents  int NOT NULL CHECK (price_cents > 0)
);
CREATE TABLE orders (
    id           int AUTO_INCREMENT PRIMARY KEY,
    customer_id  int NOT NULL,
    product_id   int NOT NULL,
    quantity     int NOT NULL CHECK (quantity > 0),
    total_cents  int NOT NULL,
    status       varchar(20) NOT NULL,
    ordered_at   datetime NOT NULL,
    FOREIGN KEY (customer_id) REFERENCES customers(id),
    FOREIGN KEY (product_id) REFERENCES products(id)
);

INSERT INTO customers (full_name, email, phone, ssn, card_number, address, birth_date, notes)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300),
n AS (SELECT i,
             ELT(1 + i % 10, 'Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken', 'Radia', 'Leslie') AS f,
             ELT(1 + i % 11, 'Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson', 'Perlman', 'Lamport', 'Ritchie') AS l
      FROM s)
SELECT CONCAT(f, ' ', l),
       CONCAT(LOWER(f), '.', LOWER(l), i, '@example.com'),
       CONCAT('+1-555-', LPAD(i % 10000, 4, '0')),
       CONCAT('9', LPAD(i % 100, 2, '0'), '-', LPAD(i % 97 + 1, 2, '0'), '-', LPAD(i * 37 % 10000, 4, '0')),
       ELT(1 + i % 6, '4111111111111111', '5555555555554444', '378282246310005', '6011111111111117',
           '4012888888881881', '5105105105105100'),
       CONCAT(100 + i, ' ', ELT(1 + i % 6, 'Oak', 'Maple', 'Cedar', 'Elm', 'Birch', 'Willow'), ' Street, Springfield'),
       DATE_ADD('1950-01-01', INTERVAL (i * 7919 % 20000) DAY),
       CASE WHEN i % 5 = 0 THEN 'Called support about a refund; prefers email.' END
FROM n ORDER BY i;

INSERT INTO products (sku, name, price_cents)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
SELECT CONCAT('SKU-', LPAD(i, 4, '0')),
       CONCAT(ELT(1 + i % 8, 'Kettle', 'Lamp', 'Backpack', 'Notebook', 'Headphones', 'Mug', 'Chair', 'Desk'), ' model ', i),
       500 + (i * 1237 % 20000)
FROM s ORDER BY i;

INSERT INTO orders (customer_id, product_id, quantity, total_cents, status, ordered_at)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000)
SELECT 1 + (i * 7 % 300),
       1 + (i * 13 % 50),
       1 + i % 3,
       (1 + i % 3) * (500 + ((1 + (i * 13 % 50)) * 1237 % 20000)),
       ELT(1 + i % 4, 'paid', 'shipped', 'delivered', 'refunded'),
       NOW() - INTERVAL (i % 365) DAY
FROM s ORDER BY i;

ANALYZE TABLE customers, products, orders;

CREATE DATABASE other;
CREATE TABLE other.secret (id int PRIMARY KEY, v text);
INSERT INTO other.secret VALUES (1, 'other-database-secret');
"#
    )
}
