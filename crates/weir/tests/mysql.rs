//! The MySQL listener, end to end: a throwaway MariaDB, the real `weir serve`, and real
//! clients (the `mariadb` CLI, PyMySQL, mysql-connector-python). The server is the oracle:
//! what a statement did is checked directly afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::mariadb::{mariadb_cli, python, Mariadb};
use common::{stdout, Gateway, ALICE_TOKEN, BOB_TOKEN};

/// A gateway in front of `m` with the `shopmy` (development) target and `shopprod`, the
/// same database as production, writes bounded to 100 rows.
fn gateway(m: &Mariadb) -> Gateway {
    let prod = m.target_toml("shopprod", "production");
    Gateway::start_mariadb_custom(
        m,
        common::Options {
            fast: true,
            ..Default::default()
        },
        move |_, _| format!("{prod}\n[policy]\nbulk_write_rows = 100\n"),
    )
}

/// The server as the oracle for the trail: every statement the server ran on Weir's own
/// upstream sessions (the general log's `Query` lines of the connections logged in as
/// `weir`) has its statement event, the same text or the same fingerprint — but for the
/// row bound's bracket, which is Weir's and recorded with the statement it brackets.
fn every_query_has_its_event(m: &Mariadb, g: &Gateway) {
    let log = m.general_log();
    let events = g.audit_events();
    let mut weir_threads = std::collections::HashSet::new();
    let mut queries = Vec::new();
    let mut thread = String::new();
    for line in log.lines() {
        let rest = line.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ' || c == ':');
        let fields: Vec<&str> = rest.trim_start().splitn(2, '\t').collect();
        let Some(head) = fields.first() else { continue };
        let mut words = head.split_whitespace();
        let (Some(id), Some(command)) = (words.next(), words.next()) else {
            continue;
        };
        if !id.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        thread = id.to_owned();
        let argument = fields.get(1).copied().unwrap_or("");
        match command {
            "Connect" if argument.starts_with("weir@") => {
                weir_threads.insert(thread.clone());
            }
            "Query" => queries.push((thread.clone(), argument.to_owned())),
            _ => {}
        }
    }
    let _ = thread;
    let bracket = [
        "START TRANSACTION",
        "SAVEPOINT weir_row_bound",
        "RELEASE SAVEPOINT weir_row_bound",
        "ROLLBACK TO SAVEPOINT weir_row_bound",
        "COMMIT",
        "ROLLBACK",
    ];
    let mut checked = 0;
    for (_, sql) in queries.iter().filter(|(t, _)| weir_threads.contains(t)) {
        if bracket.contains(&sql.as_str()) {
            continue;
        }
        let fingerprint =
            weir_analyze::mysql::analyze(sql.as_bytes(), &weir_analyze::mysql::Mode::new("shop"))
                .map(|a| format!("{:016x}", a.fingerprint))
                .ok();
        let recorded = events.iter().any(|e| {
            e["event"] == "statement"
                && (e["sql"] == sql.as_str()
                    || fingerprint
                        .as_deref()
                        .is_some_and(|f| e["fingerprint"] == f))
        });
        assert!(
            recorded,
            "the server ran {sql:?} and the trail has no event for it"
        );
        checked += 1;
    }
    assert!(
        checked > 0,
        "no statement of Weir's sessions in the general log:\n{log}"
    );
}

fn cli(g: &Gateway, db: &str, sql: &str) -> (String, String) {
    let o = mariadb_cli(g.mysql_port.unwrap(), "alice", ALICE_TOKEN, db, sql);
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_mariadb_cli_is_served_masked_and_guarded() {
    let m = Mariadb::start();
    let g = gateway(&m);

    // Transparent for what is not sensitive: the same rows as directly.
    let direct = m.sql("SELECT id, full_name FROM shop.customers ORDER BY id LIMIT 5");
    let (out, err) = cli(
        &g,
        "shopmy",
        "SELECT id, full_name FROM customers ORDER BY id LIMIT 5",
    );
    assert!(err.is_empty(), "{err}");
    let through: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(through, direct.lines().collect::<Vec<_>>());
    let (out, _) = cli(&g, "shopmy", "SELECT count(*), count(email) FROM customers");
    assert_eq!(out.lines().nth(1), Some("300\t300"));

    // A wrong token, or none: 1045 and no upstream contact.
    let o = mariadb_cli(
        g.mysql_port.unwrap(),
        "alice",
        "not-the-token",
        "shopmy",
        "SELECT 1",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("ERROR 1045 (28000)"));
    let o = mariadb_cli(
        g.mysql_port.unwrap(),
        "alice",
        BOB_TOKEN,
        "shopmy",
        "SELECT 1",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("ERROR 1045 (28000)"));

    // Sensitive values never leave in clear, whatever expression carries them.
    let email = m.sql("SELECT email FROM shop.customers WHERE id = 7");
    let email = email.trim();
    assert!(email.contains('@'));
    m.sql("CREATE VIEW shop.contact AS SELECT id, email AS reach FROM shop.customers");
    for sql in [
        "SELECT email FROM customers WHERE id = 7",
        "SELECT concat('<', email, '>') FROM customers WHERE id = 7",
        "SELECT group_concat(email) FROM customers WHERE id IN (6, 7, 8)",
        "SELECT json_object('e', email) FROM customers WHERE id = 7",
        "SELECT full_name FROM customers WHERE id = 0 UNION SELECT email FROM customers WHERE id = 7",
        "SELECT (SELECT email FROM customers WHERE id = 7) AS x",
        "SELECT x FROM (SELECT email AS x FROM customers WHERE id = 7) d",
        "SELECT reach FROM contact WHERE id = 7",
        "SELECT upper(email), lower(ssn) FROM customers WHERE id = 7",
    ] {
        let (out, err) = cli(&g, "shopmy", sql);
        assert!(err.is_empty(), "{sql}: {err}");
        assert!(
            !out.to_lowercase().contains(&email.to_lowercase()),
            "{sql} leaked {email}: {out}"
        );
        assert!(out.lines().count() >= 2, "{sql}: no row: {out}");
    }

    // Policy: a DELETE without WHERE in production is denied, and nothing is deleted.
    let (_, err) = cli(&g, "shopprod", "DELETE FROM customers");
    assert!(
        err.contains("ERROR 1227 (42000)")
            && err.contains("weir: denied by weir.where-required-in-production"),
        "{err}"
    );
    assert_eq!(m.sql("SELECT count(*) FROM shop.customers").trim(), "300");
    // Another database is out of reach, also through USE.
    for sql in [
        "SELECT * FROM other.secret",
        "USE other",
        "SELECT v FROM customers JOIN other.secret s ON s.id = customers.id",
    ] {
        let (out, err) = cli(&g, "shopmy", sql);
        assert!(err.contains("weir.other-database"), "{sql}: {err}");
        assert!(!out.contains("other-database-secret"));
    }
    let o = mariadb_cli(
        g.mysql_port.unwrap(),
        "alice",
        ALICE_TOKEN,
        "other",
        "SELECT 1",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("ERROR 1049"));
    // Every session shares the upstream user: its process list and KILL would reach other
    // identities' connections.
    for (sql, rule) in [
        ("SHOW PROCESSLIST", "weir.mysql-processlist"),
        (
            "SELECT info FROM information_schema.processlist",
            "weir.mysql-processlist",
        ),
        ("KILL 1", "weir.mysql-kill"),
    ] {
        let (_, err) = cli(&g, "shopmy", sql);
        assert!(err.contains(rule), "{sql}: {err}");
    }
    // Server files, both ways.
    let (_, err) = cli(
        &g,
        "shopmy",
        "SELECT email INTO OUTFILE '/tmp/weir-mysql-outfile' FROM customers",
    );
    assert!(err.contains("ERROR 1227"), "{err}");
    assert!(!std::path::Path::new("/tmp/weir-mysql-outfile").exists());
    let (out, err) = cli(&g, "shopmy", "SELECT load_file('/etc/passwd')");
    assert!(
        err.contains("weir.server-files-and-programs") && !out.contains("root:"),
        "{err}"
    );
    let (_, err) = cli(
        &g,
        "shopmy",
        "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE products",
    );
    assert!(err.contains("ERROR"), "{err}");
    // Unknown commands and the binary protocol fail closed; COM_PING answers.
    let (_, err) = cli(&g, "shopmy", "SELECT 1 || 1");
    assert!(err.contains("weir.lexing-mode"), "{err}");

    // Every statement Weir sent carries an event, with constants stripped.
    let events = g.audit_events();
    let statements: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "statement" || e["event"] == "statement" || e.get("sql").is_some())
        .collect();
    assert!(
        statements
            .iter()
            .any(|e| e.to_string().contains("WHERE id = ?")),
        "no normalized statement event: {events:?}"
    );
    assert!(!events.iter().any(|e| e.to_string().contains(email)));
    assert!(m
        .general_log()
        .contains("SELECT email FROM customers WHERE id = 7"));
    every_query_has_its_event(&m, &g);
}

#[test]
fn python_drivers_work_with_their_defaults_and_over_tls() {
    let m = Mariadb::start();
    let g = gateway(&m);
    let port = g.mysql_port.unwrap();
    let script = format!(
        r#"
import pymysql, mysql.connector
for ssl in (None, {{"check_hostname": False}}):
    c = pymysql.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopmy", ssl=ssl)
    cur = c.cursor()
    cur.execute("SELECT id, email FROM customers WHERE id = %s", (7,))
    print("pymysql", ssl is not None, cur.fetchall())
    try:
        cur.execute("SELECT /*!99999 ssn, */ id FROM customers WHERE id = 7")
        print("comment ran")
    except pymysql.err.MySQLError as e:
        print("comment refused", e.args[0], e.args[1])
    c.close()
# COM_FIELD_LIST (what the interactive CLI's auto-rehash sends): column definitions, and the
# session goes on.
from pymysql.constants import COMMAND
c = pymysql.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopmy")
c._execute_command(COMMAND.COM_FIELD_LIST, b"customers\0")
fields = 0
while True:
    p = c._read_packet()
    if p.is_eof_packet():
        break
    fields += 1
cur = c.cursor()
cur.execute("SELECT 40 + 2")
print("field list", fields, cur.fetchall())
c.close()
# What sqlparser's own statement loop would drop after END, and a chain deep enough to
# overflow a parser's stack: refused, the table intact, the gateway alive.
from pymysql.constants import CLIENT
c = pymysql.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopmy", client_flag=CLIENT.MULTI_STATEMENTS)
cur = c.cursor()
for sql in ("SELECT 1 END; DROP TABLE orders", "SELECT 1" + "+1" * 100000):
    try:
        cur.execute(sql)
        print("ran", sql[:30])
    except pymysql.err.MySQLError as e:
        print("refused", e.args[0])
c.close()
# Its defaults: TLS when the server offers it, caching_sha2_password.
c = mysql.connector.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopmy")
cur = c.cursor()
cur.execute("SELECT id, email FROM customers WHERE id = 7")
print("connector", cur.fetchall())
c.close()
"#
    );
    let o = python(&script);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let email = m.sql("SELECT email FROM shop.customers WHERE id = 7");
    assert!(!out.contains(email.trim()), "{out}");
    assert_eq!(out.matches("pymysql").count(), 2, "{out}");
    assert_eq!(out.matches("comment refused 1227").count(), 2, "{out}");
    assert!(out.contains("connector [(7,"), "{out}");
    assert!(out.contains("field list 10 ((42,),)"), "{out}");
    assert_eq!(
        out.lines().filter(|l| *l == "refused 1227").count(),
        2,
        "{out}"
    );
    assert_eq!(m.sql("SELECT count(*) FROM shop.orders").trim(), "1000");
}

#[test]
fn a_bulk_write_waits_for_approval_with_its_count() {
    let m = Mariadb::start();
    let g = gateway(&m);
    let port = g.mysql_port.unwrap();
    // Small writes run (inside Weir's bracket).
    let (_, err) = cli(
        &g,
        "shopprod",
        "UPDATE customers SET notes = 'one' WHERE id = 5",
    );
    assert!(err.is_empty(), "{err}");
    assert_eq!(
        m.sql("SELECT notes FROM shop.customers WHERE id = 5")
            .trim(),
        "one"
    );
    // With autocommit off, a bounded write stays in the client's transaction: its rollback
    // undoes it.
    let (_, err) = cli(
        &g,
        "shopprod",
        "SET autocommit = 0; UPDATE customers SET notes = 'undone' WHERE id = 6; ROLLBACK",
    );
    assert!(err.is_empty(), "{err}");
    assert_ne!(
        m.sql("SELECT notes FROM shop.customers WHERE id = 6")
            .trim(),
        "undone"
    );
    // 300 rows over a bound of 100: rolled back, and waits.
    let waiting = std::thread::spawn(move || {
        mariadb_cli(
            port,
            "alice",
            ALICE_TOKEN,
            "shopprod",
            "UPDATE customers SET notes = 'all' WHERE id > 0",
        )
    });
    let mut id = None;
    for _ in 0..200 {
        let list = stdout(&g.weir(&["approvals"]));
        if let Some(line) = list.lines().find(|l| l.contains("300")) {
            id = line.split_whitespace().next().map(str::to_owned);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = id.expect("an approval request naming 300 rows");
    assert_eq!(
        m.sql("SELECT count(*) FROM shop.customers WHERE notes = 'all'")
            .trim(),
        "0"
    );
    let denied = g.weir(&["deny", &id, "--as", "bob", "--reason", "too broad"]);
    assert!(
        denied.status.success(),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let o = waiting.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ERROR 1227") && err.contains(&id), "{err}");
    assert_eq!(
        m.sql("SELECT count(*) FROM shop.customers WHERE notes = 'all'")
            .trim(),
        "0"
    );
}

#[test]
fn policy_check_decides_mysql_statements() {
    let m = Mariadb::start();
    let g = gateway(&m);
    for (sql, want) in [
        ("SELECT * FROM customers", "allow"),
        (
            "DELETE FROM customers",
            "deny weir.where-required-in-production",
        ),
        ("SELECT * FROM other.secret", "deny weir.other-database"),
        ("SELECT /*!1 1 */", "deny weir.lexing-mode"),
        ("UPDATE customers SET notes = 'x' WHERE id > 0", "bound 100"),
    ] {
        let o = g.weir(&[
            "policy", "check", "--as", "alice", "--target", "shopprod", sql,
        ]);
        let out = stdout(&o);
        assert!(out.trim().starts_with(want), "{sql}: {out}");
    }
}

#[test]
fn hostile_packets_close_the_connection_and_the_gateway_goes_on() {
    let m = Mariadb::start();
    let g = gateway(&m);
    let port = g.mysql_port.unwrap();
    let attempts: [&[u8]; 4] = [
        // A frame that claims 16 MiB and stops.
        &[0xff, 0xff, 0xff, 1, 0x85, 0xa6],
        // A handshake response cut short.
        &[5, 0, 0, 1, 0x85, 0xa6, 0x0f, 0x00, 0x00],
        // Not MySQL at all.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // A handshake response whose auth data length runs past the packet.
        &[
            40, 0, 0, 1, 0x05, 0xa6, 0x2f, 0x00, 0, 0, 0, 1, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'a', 0, 200, 1, 2,
        ],
    ];
    for bytes in attempts {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut greeting = [0u8; 512];
        let n = s.read(&mut greeting).unwrap();
        assert!(n > 4 && greeting[4] == 10, "a protocol 10 greeting");
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let (out, err) = cli(&g, "shopmy", "SELECT 41 + 1");
    assert!(err.is_empty() && out.contains("42"), "{out}{err}");
}

/// A node script run with the mysql2 driver installed in `tests/clients/mysql2`.
fn mysql2(script: &str) -> std::process::Output {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/mysql2");
    let mut child = std::process::Command::new("node")
        .arg("-")
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn prepared_statements_are_decided_at_every_execution_and_their_binary_rows_masked() {
    let m = Mariadb::start();
    let g = gateway(&m);
    let port = g.mysql_port.unwrap();
    let email = m.sql("SELECT email FROM shop.customers WHERE id = 7");
    let email = email.trim();
    let ssn = m.sql("SELECT ssn FROM shop.customers WHERE id = 7");
    let ssn = ssn.trim();

    // mysql-connector-python's prepared cursor: COM_STMT_PREPARE / EXECUTE / CLOSE.
    let script = format!(
        r#"
import mysql.connector
c = mysql.connector.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopprod")
cur = c.cursor(prepared=True)
cur.execute("SELECT id, full_name, email, ssn, created_at FROM customers WHERE id = %s", (7,))
print("row", cur.fetchall())
cur.execute("SELECT id FROM customers WHERE id = %s", (8,))
print("again", cur.fetchall())
cur.execute("UPDATE customers SET notes = %s WHERE id < %s", ("prepared", 5))
print("updated", cur.rowcount)
c.commit()
for sql, args in (
    ("UPDATE customers SET notes = %s WHERE %s", ("all", 1)),
    ("SELECT /*!99999 ssn, */ id FROM customers WHERE id = %s", (7,)),
    ("SELECT secret FROM other.secret WHERE 1 = %s", (1,)),
):
    try:
        cur.execute(sql, args)
        print("ran", sql, cur.fetchall() if cur.with_rows else cur.rowcount)
    except mysql.connector.Error as e:
        print("refused", e.errno, e.msg)
cur.execute("SELECT count(*) FROM customers WHERE notes = %s", ("prepared",))
print("count", cur.fetchall())
c.close()
"#
    );
    let o = python(&script);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("row [(7, '"), "{out}");
    assert!(!out.contains(email) && !out.contains(ssn), "{out}");
    assert!(out.contains("again [(8,)]"), "{out}");
    assert!(out.contains("updated 4"), "{out}");
    assert!(out.contains("count [(4,)]"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("refused 1227"))
            .count(),
        3,
        "{out}"
    );
    assert!(out.contains("weir.where-required-in-production"), "{out}");
    assert!(out.contains("weir.lexing-mode"), "{out}");
    assert!(out.contains("weir.other-database"), "{out}");
    assert_eq!(
        m.sql("SELECT count(*) FROM shop.customers WHERE notes = 'all'")
            .trim(),
        "0"
    );
    assert_eq!(
        m.sql("SELECT count(*) FROM shop.customers WHERE notes = 'prepared'")
            .trim(),
        "4"
    );

    // A cursor (rows by COM_STMT_FETCH), long data, reset, and ids Weir never saw prepared,
    // at the packet level.
    let script = format!(
        r#"
import struct, pymysql
from pymysql.constants import COMMAND
c = pymysql.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopmy")
def packets():
    out = []
    while True:
        p = c._read_packet()
        out.append(p.get_all_data())
        if p.is_eof_packet() or p.is_error_packet():
            return out
c._execute_command(COMMAND.COM_STMT_PREPARE, b"SELECT id, email FROM customers WHERE id < ? ORDER BY id")
ok = c._read_packet().get_all_data()
sid, cols, params = struct.unpack("<IHH", ok[1:9])
packets(); packets()
c._execute_command(COMMAND.COM_STMT_SEND_LONG_DATA, struct.pack("<IH", sid, 0) + b"1")
c._execute_command(COMMAND.COM_STMT_RESET, struct.pack("<I", sid))
print("reset", c._read_packet().is_ok_packet())
# One parameter, LONGLONG 4, a read-only cursor.
execute = struct.pack("<IBI", sid, 1, 1) + b"\x00" + b"\x01" + struct.pack("<BB", 8, 0) + struct.pack("<q", 4)
c._execute_command(COMMAND.COM_STMT_EXECUTE, execute)
n = c._read_packet().get_all_data()
defs = packets()
print("cursor columns", n[0], len(defs))
c._execute_command(COMMAND.COM_STMT_FETCH, struct.pack("<II", sid, 100))
rows = packets()
print("fetched", len(rows) - 1, b"@" in b"".join(rows), b"example.com" in b"".join(rows))
for cmd, body in ((COMMAND.COM_STMT_EXECUTE, struct.pack("<IBI", 999, 0, 1)), (COMMAND.COM_STMT_FETCH, struct.pack("<II", 999, 1))):
    c._execute_command(cmd, body)
    try:
        c._read_packet()
        print("ran unknown")
    except pymysql.err.MySQLError as e:
        print("unknown", e.args[0])
c._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", sid))
cur = c.cursor()
cur.execute("SELECT 6 * 7")
print("after", cur.fetchall())
c.close()
"#
    );
    let o = python(&script);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("reset True"), "{out}");
    assert!(out.contains("cursor columns 2 3"), "{out}");
    assert!(out.contains("fetched 3 True True"), "{out}");
    assert!(!out.contains(email), "{out}");
    assert_eq!(out.matches("unknown 1243").count(), 2, "{out}");
    assert!(out.contains("after ((42,),)"), "{out}");

    // node mysql2's execute (server-side prepares, cached by the driver), a cursor-less
    // binary result with every kind of column, and an id Weir never saw prepared.
    let script = format!(
        r#"
const mysql = require("mysql2/promise");
(async () => {{
  const c = await mysql.createConnection({{
    host: "127.0.0.1", port: {port}, user: "alice", password: "{ALICE_TOKEN}", database: "shopmy",
    authPlugins: {{ mysql_clear_password: () => () => Buffer.from("{ALICE_TOKEN}\0") }},
  }});
  for (const id of [7, 7, 9]) {{
    const [rows] = await c.execute("SELECT id, email, ssn, card_number, notes, created_at FROM customers WHERE id = ?", [id]);
    console.log("row", JSON.stringify(rows));
  }}
  const [agg] = await c.execute("SELECT CONCAT(full_name, ' ', email) AS who, 1.5 AS d, NULL AS n FROM customers WHERE id = ?", [7]);
  console.log("concat", JSON.stringify(agg));
  try {{
    await c.execute("SELECT ssn FROM customers WHERE id = 1 || ?", [1]);
    console.log("ran pipes");
  }} catch (e) {{
    console.log("refused", e.errno);
  }}
  await c.end();
}})().catch((e) => {{ console.log("failed", e.message); process.exit(1); }});
"#
    );
    let o = mysql2(&script);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out.matches("row [{\"id\":").count(), 3, "{out}");
    assert!(out.contains("row [{\"id\":9,"), "{out}");
    assert!(!out.contains(email) && !out.contains(ssn), "{out}");
    assert!(out.contains("concat [{\"who\":"), "{out}");
    assert!(out.contains("refused 1227"), "{out}");

    // The server as the oracle: every statement it prepared or executed has its event,
    // decided before it ran; what Weir refused never reached it.
    let log = m.general_log();
    let events = g.audit_events();
    for (command, via) in [("Prepare", "prepare"), ("Execute", "execute")] {
        let ran = log
            .lines()
            .filter(|l| l.contains(&format!(" {command}\t")))
            .count();
        let recorded = events
            .iter()
            .filter(|e| e["via"] == via && e["decision"] != "deny")
            .count();
        assert!(ran > 0, "no {command} in the general log:\n{log}");
        assert_eq!(ran, recorded, "{command}: {log}\n{events:?}");
    }
    // A cursor's fetched rows complete its execution on record, with what was masked.
    assert!(
        events.iter().any(|e| e["event"] == "completed"
            && e["tags"][0]
                .as_str()
                .is_some_and(|t| t.starts_with("FETCH "))
            && e["rows"].as_u64().is_some_and(|n| n > 0)
            && e["masked"].as_array().is_some_and(|m| !m.is_empty())),
        "no FETCH completion with masked columns: {events:?}"
    );
    assert!(
        !log.lines()
            .any(|l| (l.contains(" Prepare\t") || l.contains(" Execute\t"))
                && (l.contains("other.secret") || l.contains("99999") || l.contains("WHERE ?"))),
        "{log}"
    );
}

#[test]
fn kill_reaches_only_the_callers_own_connections() {
    let m = Mariadb::start();
    let g = gateway(&m);
    let port = g.mysql_port.unwrap();
    let script = format!(
        r#"
import threading, time, pymysql
def connect(user, token):
    return pymysql.connect(host="127.0.0.1", port={port}, user=user, password=token, database="shopmy")
a = connect("alice", "{ALICE_TOKEN}")
weir_id = a.server_thread_id[0]
cur = a.cursor(); cur.execute("SELECT CONNECTION_ID()"); server_id = cur.fetchone()[0]
print("ids differ", weir_id != server_id)
def kill(conn, sql):
    try:
        conn.cursor().execute(sql)
        print("killed", sql.split()[1])
    except pymysql.err.MySQLError as e:
        print("refused", e.args[0], "weir.mysql-kill" in e.args[1])
b = connect("bob", "{BOB_TOKEN}")
kill(b, "KILL QUERY %d" % weir_id)
kill(b, "KILL QUERY %d" % server_id)
c = connect("alice", "{ALICE_TOKEN}")
kill(c, "KILL QUERY 999999")
# Ctrl-C in the mysql CLI: KILL QUERY with the id of the greeting, from a second connection.
slept = []
def sleep():
    try:
        cur.execute("SELECT SLEEP(30)")
        slept.append(cur.fetchone()[0])
    except pymysql.err.MySQLError as e:
        slept.append(e.args[0])
t = threading.Thread(target=sleep)
started = time.time(); t.start(); time.sleep(1)
kill(c, "KILL QUERY %d" % weir_id)
t.join(25)
print("interrupted", slept, time.time() - started < 20)
kill(c, "KILL CONNECTION %d" % server_id)
try:
    cur.execute("SELECT 1")
    print("still alive")
except pymysql.err.MySQLError as e:
    print("gone", e.args[0])
"#
    );
    let o = python(&script);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("ids differ True"), "{out}");
    assert_eq!(out.matches("refused 1227 True").count(), 3, "{out}");
    // SLEEP returns 1 when its query is killed, or the server reports 1317.
    assert!(
        out.contains("interrupted [1] True") || out.contains("interrupted [1317] True"),
        "{out}"
    );
    assert!(out.contains("killed CONNECTION"), "{out}");
    assert!(out.contains("gone"), "{out}");
}

/// `upstream_tls` on a MySQL target: Weir speaks TLS to the server (an account that may log
/// in only over TLS gets in), verify-full checks the certificate against `upstream_ca`, and a
/// target whose server cannot be verified, or that is configured for cleartext to a TLS-only
/// account, serves nobody.
#[test]
fn upstream_tls_reaches_a_server_that_requires_it_and_checks_its_certificate() {
    let m = Mariadb::start();
    let ca = m.ca_file();
    let other = ca.with_file_name("other-ca.pem");
    let pw = m.password_file();
    let block = |name: &str, tls: &str| {
        format!(
            "\n[[target]]\nname = \"{name}\"\nengine = \"mysql\"\nenvironment = \"development\"\nupstream = \"127.0.0.1:{}\"\ndatabase = \"shop\"\nuser = \"weirtls\"\npassword_file = \"{}\"\n{tls}\n",
            m.port,
            pw.display()
        )
    };
    let extra = [
        block(
            "tlsfull",
            &format!(
                "upstream_tls = \"verify-full\"\nupstream_ca = \"{}\"\nupstream_server_name = \"localhost\"",
                ca.display()
            ),
        ),
        block("tlsrequire", "upstream_tls = \"require\""),
        block(
            "tlswrongca",
            &format!(
                "upstream_tls = \"verify-full\"\nupstream_ca = \"{}\"\nupstream_server_name = \"localhost\"",
                other.display()
            ),
        ),
        block("tlsplain", ""),
    ]
    .concat();
    let g = Gateway::start_mariadb_custom(
        &m,
        common::Options {
            fast: true,
            ..Default::default()
        },
        move |_, _| extra,
    );
    let port = g.mysql_port.unwrap();
    for db in ["tlsfull", "tlsrequire"] {
        let o = mariadb_cli(
            port,
            "alice",
            ALICE_TOKEN,
            db,
            "SHOW SESSION STATUS LIKE 'Ssl_version'; SELECT COUNT(*) FROM products",
        );
        let out = stdout(&o);
        assert!(
            o.status.success(),
            "{db}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("Ssl_version\tTLSv1."), "{db}: {out}");
        assert!(out.contains("\n50\n"), "{db}: {out}");
    }
    for db in ["tlsplain", "tlswrongca"] {
        let o = mariadb_cli(port, "alice", ALICE_TOKEN, db, "SELECT 1");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{db} served: {}", stdout(&o));
        assert!(err.contains("cannot connect to target"), "{db}: {err}");
    }
    let log = g.log();
    assert!(log.contains("tlswrongca"), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

/// Sensitivity flows with the data on MySQL too (issue 29): INSERT … SELECT, UPDATE … SET,
/// CREATE TABLE … SELECT of reversed SSNs (which content detection cannot recognize) tag the
/// written column, so later reads are masked; user variables cannot hold a sensitive value;
/// in production such a copy waits for an approver; copies of nothing sensitive run as they
/// are. The server is the oracle for what was written.
#[test]
fn copies_of_sensitive_columns_stay_masked() {
    let m = Mariadb::start();
    m.sql(
        "CREATE TABLE shop.copies (v text); CREATE TABLE shop.plain (v text); \
         CREATE TABLE shop.copies_prod (v text);",
    );
    let reversed: Vec<String> = m
        .sql("SELECT REVERSE(ssn) FROM shop.customers ORDER BY id LIMIT 20")
        .lines()
        .map(str::to_owned)
        .collect();
    let no_clear = |what: &str, out: &str| {
        for r in &reversed {
            assert!(!out.contains(r.as_str()), "{what}: {r} in clear:\n{out}");
        }
    };
    let g = gateway(&m);
    let run = |db: &str, sql: &str| {
        let (out, err) = cli(&g, db, sql);
        assert!(err.is_empty(), "{sql}: {err}");
        out
    };
    run(
        "shopmy",
        "INSERT INTO copies SELECT REVERSE(ssn) FROM customers",
    );
    assert_eq!(m.sql("SELECT COUNT(*) FROM shop.copies").trim(), "300");
    no_clear("copies", &run("shopmy", "SELECT v FROM copies ORDER BY v"));
    run(
        "shopmy",
        "CREATE TABLE made SELECT id, REVERSE(ssn) AS r FROM customers",
    );
    no_clear("made", &run("shopmy", "SELECT id, r FROM made ORDER BY id"));
    run(
        "shopmy",
        "UPDATE products p JOIN customers c ON c.id = p.id SET p.name = REVERSE(c.ssn)",
    );
    assert!(m
        .sql("SELECT name FROM shop.products WHERE id = 1")
        .contains(&reversed[0]));
    no_clear(
        "products",
        &run("shopmy", "SELECT name FROM products ORDER BY id"),
    );
    let tags = stdout(&g.weir(&["tags", "list"]));
    for column in ["shop.copies.v", "shop.made.", "shop.products.name"] {
        assert!(tags.contains(column), "{column} not tagged:\n{tags}");
    }
    // On record in the trail too, with the statement that made them.
    let derived: Vec<String> = g
        .audit_events()
        .iter()
        .filter(|e| e["event"] == "sensitivity_derived")
        .map(|e| e["tags"].to_string())
        .collect();
    assert!(
        derived
            .iter()
            .any(|t| t.contains("shop.copies.v <- shop.customers.ssn")),
        "{derived:?}"
    );

    // A user variable keeps its value for later statements: refused.
    for sql in [
        "SET @v = (SELECT ssn FROM customers LIMIT 1)",
        "SELECT ssn INTO @v FROM customers LIMIT 1",
        "SELECT @v := ssn FROM customers LIMIT 1",
    ] {
        let (out, err) = cli(&g, "shopmy", &format!("{sql}; SELECT @v"));
        assert!(
            err.contains("ERROR 1227") && err.contains("weir.sensitive-value-into-session-state"),
            "{sql}: {out}{err}"
        );
    }

    // Nothing sensitive copied: untouched, and no tag.
    run(
        "shopmy",
        "INSERT INTO plain SELECT sku FROM products WHERE id = 1; \
         INSERT INTO plain SELECT COUNT(ssn) FROM customers; INSERT INTO plain VALUES ('x')",
    );
    assert_eq!(
        run("shopmy", "SELECT v FROM plain").trim(),
        "v\nSKU-0001\n300\nx"
    );
    assert!(!stdout(&g.weir(&["tags", "list"])).contains("shop.plain"));

    // In production, alice (who may not unmask) waits for an approver; denied, nothing runs.
    let port = g.mysql_port.unwrap();
    let waiting = std::thread::spawn(move || {
        mariadb_cli(
            port,
            "alice",
            ALICE_TOKEN,
            "shopprod",
            "INSERT INTO copies_prod SELECT REVERSE(ssn) FROM customers",
        )
    });
    let mut id = None;
    for _ in 0..200 {
        let list = stdout(&g.weir(&["approvals"]));
        if let Some(line) = list
            .lines()
            .find(|l| l.contains("weir.sensitive-copy-needs-approval-in-production"))
        {
            id = line.split_whitespace().next().map(str::to_owned);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = id.expect("an approval request for the copy");
    assert!(g
        .weir(&["deny", &id, "--as", "bob", "--reason", "no"])
        .status
        .success());
    let o = waiting.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ERROR 1227") && err.contains(&id), "{err}");
    assert_eq!(m.sql("SELECT COUNT(*) FROM shop.copies_prod").trim(), "0");
    every_query_has_its_event(&m, &g);
}

/// What SHOW WARNINGS / SHOW ERRORS show quotes values of the statement that raised them:
/// withheld when that statement touched something sensitive, on both protocols; warnings
/// of harmless statements come through as the server wrote them.
#[test]
fn warnings_do_not_quote_sensitive_values() {
    let m = Mariadb::start();
    let ssn = m
        .sql("SELECT ssn FROM shop.customers WHERE id = 1")
        .trim()
        .to_owned();
    let g = gateway(&m);
    let (out, err) = cli(
        &g,
        "shopmy",
        "SELECT CAST(ssn AS UNSIGNED) FROM customers WHERE id = 1; SHOW WARNINGS; SELECT 1; SHOW WARNINGS",
    );
    assert!(err.is_empty(), "{err}");
    assert!(out.contains("Truncated incorrect"), "{out}");
    assert!(!out.contains(&ssn), "{ssn} in clear:\n{out}");
    // A later SHOW WARNINGS over the same diagnostics, in another request.
    let port = g.mysql_port.unwrap();
    let script = format!(
        r#"
import pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopmy")
cur = c.cursor()
cur.execute("SELECT CAST(ssn AS UNSIGNED) FROM customers WHERE id = 1")
cur.execute("SHOW WARNINGS")
print(cur.fetchall())
cur.execute("SELECT CAST('12abc' AS UNSIGNED) FROM products WHERE id = 1")
cur.execute("SHOW WARNINGS")
print(cur.fetchall())
"#
    );
    let o = python(&script);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.contains(&ssn), "{ssn} in clear:\n{out}");
    assert!(out.contains("'****'"), "{out}");
    assert!(
        out.contains("'12abc'"),
        "a harmless warning was changed:\n{out}"
    );
    // The binary protocol: SHOW WARNINGS prepared.
    let script = format!(
        r#"
import mysql.connector
c = mysql.connector.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopmy")
cur = c.cursor(prepared=True)
cur.execute("SELECT CAST(ssn AS UNSIGNED) FROM customers WHERE id = ?", (1,))
cur.fetchall()
cur.execute("SHOW WARNINGS")
print(cur.fetchall())
"#
    );
    let o = python(&script);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("Truncated"), "{out}");
    assert!(!out.contains(&ssn), "{ssn} in clear:\n{out}");
}

/// Write-ahead on MySQL, with the server's general log as the oracle: while the trail is
/// held still (its journal's lock taken, as another appender would), a pure read has reached
/// the server and its client has received nothing; an autocommit write has not reached the
/// server at all. Released, both complete. Held past the writer's lock timeout, the read's
/// answer is replaced by 58000 and its session ends.
#[test]
fn reads_overlap_their_flush_and_writes_wait_for_it() {
    let m = Mariadb::start();
    let g = gateway(&m);
    let port = g.mysql_port.unwrap();
    let lock = || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(g.dir.path().join("weir.db-trail").join("lock"))
            .unwrap();
        f.lock().unwrap();
        f
    };
    // A read loads the target's masking catalog (a read overlaps only when the catalog says
    // its tables run no code when read).
    let (_, err) = cli(&g, "shopmy", "SELECT COUNT(*) FROM products");
    assert!(err.is_empty(), "{err}");
    // Each client logs in first (its session's opening events are durable), then waits for
    // `go` to run its statement: what is held is the statement's own event.
    let dir = g.dir.path().to_owned();
    let client = |name: &str, sql: &str| {
        let script = format!(
            r#"
import os, sys, time, pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="alice", password="{ALICE_TOKEN}", database="shopmy", autocommit=True)
# PyMySQL's SET NAMES makes Weir read the session's mode again before the next statement.
c.cursor().execute("SELECT 1")
open("{dir}/{name}.ready", "w").close()
while not os.path.exists("{dir}/go"):
    time.sleep(0.01)
try:
    cur = c.cursor()
    cur.execute("{sql}")
    print("result", cur.fetchall())
except pymysql.err.MySQLError as e:
    print("error", e.args)
"#,
            dir = dir.display()
        );
        let child = std::thread::spawn(move || python(&script));
        let ready = dir.join(format!("{name}.ready"));
        for _ in 0..500 {
            if ready.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(ready.exists(), "{name} did not log in");
        child
    };
    let go = dir.join("go");

    let read = client(
        "read",
        "SELECT 'overlap-read' AS marker, COUNT(*) FROM products",
    );
    let write = client(
        "write",
        "UPDATE products SET name = 'autocommit-write' WHERE id = 1",
    );
    let held = lock();
    std::fs::write(&go, "").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let log = m.general_log();
    assert!(
        log.contains("overlap-read"),
        "the read did not reach the server:\n{log}"
    );
    assert!(
        !log.contains("autocommit-write"),
        "the write ran before its event was durable"
    );
    assert!(
        !read.is_finished() && !write.is_finished(),
        "a client got its answer early"
    );
    held.unlock().unwrap();
    let r = stdout(&read.join().unwrap());
    assert!(r.contains("result (('overlap-read', 50),)"), "{r}");
    let w = stdout(&write.join().unwrap());
    assert!(w.starts_with("result "), "{w}");
    assert_eq!(
        m.sql("SELECT name FROM shop.products WHERE id = 1").trim(),
        "autocommit-write"
    );

    // Held past the writer's lock timeout (10 s): the batch fails, the answer is withheld.
    std::fs::remove_file(&go).unwrap();
    let read = client("lost", "SELECT 'lost-read' AS marker");
    let held = lock();
    std::fs::write(&go, "").unwrap();
    let r = stdout(&read.join().unwrap());
    held.unlock().unwrap();
    assert!(
        !r.contains("lost-read"),
        "a result whose event failed reached the client: {r}"
    );
    assert!(
        r.contains("error (1105") && r.contains("not recorded"),
        "{r}"
    );
}

/// A Rust client, `mysql_async`, with the cleartext plugin enabled (its only way to send a
/// token): text queries masked, prepared statements (its `exec` uses the binary protocol)
/// masked and decided at every execution, a denial as error 1227, a write checked directly.
#[test]
fn mysql_async_is_served_masked_and_guarded() {
    use mysql_async::prelude::*;
    let m = Mariadb::start();
    let email = m
        .sql("SELECT email FROM shop.customers WHERE id = 3")
        .trim()
        .to_owned();
    let ssns = m.sql("SELECT ssn FROM shop.customers WHERE id IN (3, 4)");
    let g = gateway(&m);
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(g.mysql_port.unwrap())
        .user(Some("alice"))
        .pass(Some(ALICE_TOKEN))
        .db_name(Some("shopmy"))
        .prefer_socket(false)
        .enable_cleartext_plugin(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = mysql_async::Conn::new(opts).await.unwrap();
        let text: Vec<(i64, String)> = c
            .query("SELECT id, email FROM customers WHERE id <= 3 ORDER BY id")
            .await
            .unwrap();
        assert_eq!(text.len(), 3);
        assert!(
            text.iter().all(|(_, e)| e != &email && e.contains('*')),
            "{text:?}"
        );
        let stmt = c
            .prep("SELECT id, email, CONCAT(full_name, ' ', ssn) FROM customers WHERE id = ?")
            .await
            .unwrap();
        for id in [3i64, 4] {
            let rows: Vec<(i64, String, Option<String>)> = c.exec(&stmt, (id,)).await.unwrap();
            assert_eq!(rows.len(), 1);
            let (got, e, who) = &rows[0];
            assert_eq!(*got, id);
            assert!(e.contains('*') && e != &email, "{rows:?}");
            assert!(
                who.as_deref()
                    .is_none_or(|w| ssns.lines().all(|s| !w.contains(s))),
                "{rows:?}"
            );
        }
        let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM orders").await.unwrap();
        assert_eq!(n, Some(1000));
        c.exec_drop(
            "UPDATE products SET name = ? WHERE id = ?",
            ("from rust", 7i64),
        )
        .await
        .unwrap();
        match c.query_drop("SELECT * FROM other.secret").await {
            Err(mysql_async::Error::Server(e)) => {
                assert_eq!(e.code, 1227, "{e:?}");
                assert!(e.message.contains("weir.other-database"), "{e:?}");
            }
            other => panic!("not refused: {other:?}"),
        }
        c.disconnect().await.unwrap();
    });
    assert_eq!(
        m.sql("SELECT name FROM shop.products WHERE id = 7").trim(),
        "from rust"
    );
}

/// An issued token logs a MySQL client in; revoking it ends the live session and refuses
/// the next login (1045); `weir audit replay` shows the session, opening to close.
#[test]
fn a_revoked_token_ends_its_mysql_session_and_the_session_replays() {
    use mysql_async::prelude::*;
    let m = Mariadb::start();
    let g = gateway(&m);
    let out = g.weir(&[
        "token", "create", "--name", "etl", "--kind", "service", "--ttl", "24h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = stdout(&out).lines().last().unwrap().to_owned();
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(g.mysql_port.unwrap())
        .user(Some("etl"))
        .pass(Some(token.clone()))
        .db_name(Some("shopmy"))
        .prefer_socket(false)
        .enable_cleartext_plugin(true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = mysql_async::Conn::new(opts.clone()).await.unwrap();
        let id: Option<u32> = c.query_first("SELECT 41 + 1").await.unwrap();
        assert_eq!(id, Some(42));
        c.query_drop("UPDATE products SET name = 'replayed' WHERE id = 2")
            .await
            .unwrap();
        let revoked = std::time::Instant::now();
        assert!(g.weir(&["token", "revoke", "etl"]).status.success());
        // The session ends: the next statement (after the poll interval) fails.
        loop {
            match c.query_drop("SELECT 1").await {
                Err(_) => break,
                Ok(()) => {
                    assert!(
                        revoked.elapsed() < Duration::from_secs(10),
                        "the session outlived its token"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        match mysql_async::Conn::new(opts).await {
            Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045, "{e:?}"),
            other => panic!("a revoked token logged in: {:?}", other.map(|_| ())),
        }
    });
    let events = g.audit_events();
    let session = events
        .iter()
        .find(|e| e["event"] == "connection_opened" && e["identity"] == "etl")
        .map(|e| e["session"].to_string())
        .expect("etl's session opened");
    let out = g.weir(&["audit", "replay", &session]);
    let replay = stdout(&out);
    let kinds: Vec<&str> = replay.lines().filter_map(|l| l.split(' ').nth(2)).collect();
    // Weir's own read of the session's mode comes first, on record before the opening.
    assert_eq!(
        kinds.iter().take(2).copied().collect::<Vec<_>>(),
        ["statement", "connection_opened"],
        "{replay}"
    );
    assert_eq!(kinds.last(), Some(&"connection_closed"), "{replay}");
    assert!(replay.contains("UPDATE products SET name"), "{replay}");
    assert!(replay.contains("[\"OK 1\"] rows=1"), "{replay}");
}

/// An agent over MCP on a MySQL target: `describe_target` lists the shop's tables with
/// `ssn` and `email` sensitive, `query` comes back masked and decided by the same policy
/// (a production DELETE without WHERE refused with its rule), and the tool calls are
/// sessions of the MySQL adapter on record like any other.
#[test]
fn mcp_agents_query_a_mysql_target_through_the_same_adapter() {
    use std::io::{BufRead, BufReader};
    let m = Mariadb::start();
    let email = m
        .sql("SELECT email FROM shop.customers WHERE id = 1")
        .trim()
        .to_owned();
    let g = gateway(&m);
    let out = g.weir(&[
        "token", "create", "--name", "claude", "--kind", "agent", "--groups", "agents",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = stdout(&out).lines().last().unwrap().trim().to_owned();
    let mut child = std::process::Command::new("python3")
        .arg(common::repo_root().join("tests/clients/python/mcp_client.py"))
        .args(["stdio", common::weir_bin()])
        .arg(&g.config)
        .arg(&token)
        .env("WEIR_CLOCK_FILE", g.clock_file())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut call = |tool: &str, args: serde_json::Value| -> serde_json::Value {
        writeln!(
            stdin,
            "{}",
            serde_json::json!({ "tool": tool, "args": args })
        )
        .unwrap();
        stdin.flush().unwrap();
        let line = lines.next().unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let described = call(
        "describe_target",
        serde_json::json!({ "target": "shopprod" }),
    );
    assert_eq!(described["is_error"], false, "{described}");
    let tables = described["structured"]["tables"].as_array().unwrap();
    let customers = tables
        .iter()
        .find(|t| t["name"] == "shop.customers")
        .unwrap_or_else(|| panic!("{described}"));
    let sensitive: Vec<&str> = customers["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["sensitive"] == true)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        sensitive.contains(&"ssn") && sensitive.contains(&"email"),
        "{sensitive:?}"
    );
    assert!(!sensitive.contains(&"id"), "{sensitive:?}");

    let read = call(
        "query",
        serde_json::json!({ "target": "shopprod", "sql": "SELECT id, email FROM customers ORDER BY id LIMIT 3" }),
    );
    assert_eq!(read["is_error"], false, "{read}");
    let rows = read["structured"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{read}");
    assert_eq!(
        read["structured"]["columns"],
        serde_json::json!(["id", "email"])
    );
    assert!(!read.to_string().contains(&email), "{read}");

    let refused = call(
        "query",
        serde_json::json!({ "target": "shopprod", "sql": "DELETE FROM orders" }),
    );
    assert_eq!(refused["is_error"], true, "{refused}");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("weir.where-required-in-production"),
        "{refused}"
    );
    assert_eq!(m.sql("SELECT COUNT(*) FROM shop.orders").trim(), "1000");
    // An MCP session cannot wait: a statement that needs an approver is refused at once,
    // naming its request, and runs when repeated once approved.
    let ddl = serde_json::json!({ "target": "shopprod", "sql": "CREATE INDEX orders_status ON orders (status)" });
    let first = call("query", ddl.clone());
    assert_eq!(first["is_error"], true, "{first}");
    let id = first["structured"]["approval_request"]
        .as_str()
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    assert!(g.weir(&["approve", &id, "--as", "bob"]).status.success());
    let again = call("query", ddl);
    assert_eq!(again["is_error"], false, "{again}");
    assert!(m
        .sql("SHOW INDEX FROM shop.orders")
        .contains("orders_status"));
    drop(stdin);
    let _ = child.wait();

    // `weir mcp` is its own process: its events are in the shared trail.
    let search = |args: &[&str]| {
        let mut all = vec!["audit", "search", "--since", "1h"];
        all.extend_from_slice(args);
        stdout(&g.weir(&all))
    };
    let claude = search(&["--identity", "claude"]);
    assert!(
        claude.contains("shopprod") && claude.contains("weir.where-required-in-production"),
        "{claude}"
    );
    let bound = search(&["--text", "max_statement_time"]);
    assert!(bound.contains("weir.mcp-statement-timeout"), "{bound}");
}
