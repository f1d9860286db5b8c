//! The throwaway MariaDB the MySQL tests stand on: it starts, holds the shop, takes `weir`'s
//! password over TCP from the `mariadb` CLI and from PyMySQL, and its general log records
//! what ran.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::mariadb::{mariadb_cli, python, Mariadb, MARIADB_USER};
use common::{stderr, stdout};

#[test]
fn mariadb_harness_starts_seeds_and_logs() {
    let started = std::time::Instant::now();
    let m = Mariadb::start();
    eprintln!("Mariadb::start() took {:?}", started.elapsed());

    assert_eq!(m.sql("select count(*) from shop.customers").trim(), "300");
    assert_eq!(m.sql("select count(*) from shop.orders").trim(), "1000");
    assert_eq!(m.sql("select count(*) from shop.products").trim(), "50");
    assert_eq!(
        m.sql("select v from other.secret where id = 1").trim(),
        "other-database-secret"
    );
    assert!(m.try_sql("select * from shop.nope").status.code() != Some(0));

    // The CLI as a user types it, over TCP, with weir's password. (It strips `/* */`
    // comments before sending unless given `--comments`: the marker is a literal.)
    let out = mariadb_cli(
        m.port,
        MARIADB_USER,
        &m.password,
        "shop",
        "select email from customers where id = 7 and 'via-cli' <> ''",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "email\nken.thompson7@example.com\n");
    // A wrong password is refused: 1045.
    let out = mariadb_cli(m.port, MARIADB_USER, "wrong", "shop", "select 1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("1045"), "{}", stderr(&out));

    // PyMySQL with its defaults.
    let out = python(&format!(
        r#"
import pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="{MARIADB_USER}", password="{pw}", database="shop")
with c.cursor() as cur:
    cur.execute("select full_name, card_number from customers where id = %s /* via-pymysql */", (3,))
    print(cur.fetchone())
c.close()
"#,
        port = m.port,
        pw = m.password
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "('Edsger Dijkstra', '6011111111111117')"
    );

    let log = m.general_log();
    let query = |needle: &str| {
        log.lines()
            .any(|l| l.contains("Query") && l.contains(needle))
    };
    assert!(query("via-cli"), "{log}");
    assert!(query("via-pymysql"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("Connect") && l.contains("weir@127.0.0.1")),
        "{log}"
    );

    // Dropping stops the server and removes the datadir.
    let dir = m.dir.path().to_path_buf();
    drop(m);
    assert!(!dir.exists());
}

/// `Gateway::start_with_mariadb` writes a config `weir serve` accepts: a MySQL listener on
/// `mysql_port` and the MariaDB as target `shopmy`.
#[test]
fn gateway_starts_with_a_mariadb_target() {
    let m = Mariadb::start();
    let g = common::Gateway::start_with_mariadb(&m);
    let port = g.mysql_port.unwrap();
    let config = std::fs::read_to_string(&g.config).unwrap();
    assert!(
        config.contains(&format!("mysql_listen = \"127.0.0.1:{port}\"")),
        "{config}"
    );
    assert!(config.contains("engine = \"mysql\""), "{config}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
}
