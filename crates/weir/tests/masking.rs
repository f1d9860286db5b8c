//! Masking at the wire, with real clients: every byte the client receives is captured by a
//! relay between client and gateway, and no clear sensitive value may appear in it — through
//! renames, expressions, aggregates, whole-row values, subqueries, unions, views, cursors,
//! the extended protocol in binary format, and error messages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The clear values the seed data holds; none may reach a client.
const SECRETS: &[&str] = &[
    "jane.doe@example.com",
    "omar@corp.example",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "078-05-1120",
    "219-09-9999",
    "+1 415-555-0132",
    "+44 20 7946 0958",
    "12 Harbour Road",
    "private note about jane",
    "1984-02-29",
    "s3cr3t-passw0rd",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqYW5lIn0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw",
];

const SEED: &str = "
CREATE TABLE customers (
    id int PRIMARY KEY,
    name text,
    email text,
    card_number text,
    ssn text,
    phone text,
    address text,
    notes text,
    birth_date date,
    password text,
    profile jsonb
);
INSERT INTO customers VALUES
 (1, 'Jane Doe', 'jane.doe@example.com', '4111 1111 1111 1111', '078-05-1120', '+1 415-555-0132',
  '12 Harbour Road', 'private note about jane', '1984-02-29', 's3cr3t-passw0rd',
  '{\"tier\": \"gold\"}'),
 (2, 'Omar Ali', 'omar@corp.example', '5500-0000-0000-0004', '219-09-9999', '+44 20 7946 0958',
  '1 Main St', 'vip', '1990-01-01', 'hunter2hunter2', '{\"tier\": \"silver\"}');
CREATE TABLE misc (id int, remark text, token_blob text);
INSERT INTO misc VALUES
 (1, 'call jane.doe@example.com tomorrow', 'x'),
 (2, 'card on file 4111 1111 1111 1111', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqYW5lIn0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw');
CREATE VIEW contacts AS SELECT id, name, email AS contact FROM customers;
";

fn gateway(extra: &str) -> Gateway {
    let extra = extra.to_owned();
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        move |cluster, _| {
            cluster.psql("app", SEED).unwrap();
            format!(
                r#"
[target.columns."public.customers.notes"]
mask = "redact"
[target.columns."public.customers.ssn"]
mask = "hash"
{extra}
"#
            )
        },
    )
}

/// A relay between a client and the gateway that keeps every byte the gateway sends.
struct Tee {
    port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tee {
    fn start(gateway_port: u16) -> Tee {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&seen);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(("127.0.0.1", gateway_port)).unwrap();
                let (mut c_read, mut c_write) = (client.try_clone().unwrap(), client);
                let (mut s_read, mut s_write) = (server.try_clone().unwrap(), server);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let keep = Arc::clone(&keep);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        keep.lock().unwrap().extend_from_slice(&buf[..n]);
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Tee { port, seen }
    }

    fn conninfo(&self, user: &str, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=app user={user} password={token} sslmode=disable",
            self.port
        )
    }

    /// Asserts that no clear value reached the client, and returns what it received.
    fn assert_clean(&self) -> String {
        let seen = self.seen.lock().unwrap();
        let text = String::from_utf8_lossy(&seen).into_owned();
        for s in SECRETS {
            if let Some(at) = text.find(s) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(150)
                    .map_or(0, |(i, _)| i);
                let context: String = text[from..].chars().take(300).collect();
                panic!("clear value {s:?} reached the client, in: {context:?}");
            }
        }
        text
    }
}

#[test]
fn psql_sees_no_clear_value_however_the_query_is_written() {
    let g = gateway("");
    let tee = Tee::start(g.port);
    let out = g.psql(
        &tee.conninfo("alice", ALICE_TOKEN),
        "SELECT * FROM customers ORDER BY id;
SELECT email AS e, card_number AS c, phone AS p FROM customers ORDER BY id;
SELECT upper(email), lower(card_number) || '!', count(*) FROM customers GROUP BY 1, 2 ORDER BY 3;
SELECT row_to_json(c) FROM customers c ORDER BY id;
SELECT json_agg(c) FROM customers c;
SELECT x FROM (SELECT email AS x FROM customers) s;
SELECT upper(x) FROM (SELECT email AS x FROM customers) s;
WITH w AS (SELECT id, email FROM customers) SELECT 'mail: ' || email FROM w;
SELECT name FROM customers UNION ALL SELECT email FROM customers;
SELECT (SELECT max(email) FROM customers) AS m;
SELECT * FROM contacts ORDER BY id;
SELECT * FROM misc ORDER BY id;
SELECT 'reach me at jane.doe@example.com';
BEGIN;
DECLARE cur CURSOR FOR SELECT email, address FROM customers ORDER BY id;
FETCH ALL FROM cur;
COMMIT;
SELECT id, name, count(*) OVER () FROM customers ORDER BY id;
SELECT ssn AS again FROM customers WHERE id = 1;
",
    );
    let so = stdout(&out);
    let se = stderr(&out);
    assert!(out.status.success(), "{se}");
    tee.assert_clean();
    // What is not sensitive is shown as it is; masked values keep their shape.
    assert!(
        so.contains("1|Jane Doe|j***@example.com|**** **** **** 1111|"),
        "{so}"
    );
    assert!(so.contains("|+* ***-***-0132|****|****||****|"), "{so}");
    assert!(so.contains("1|Jane Doe|2\n2|Omar Ali|2"), "{so}");
    // A keyed hash is stable: the same SSN masks the same way everywhere.
    let hashed = so
        .lines()
        .find(|l| l.starts_with("1|Jane Doe|j***") && l.split('|').count() > 5)
        .and_then(|l| l.split('|').nth(4))
        .unwrap();
    assert_eq!(hashed.len(), 16, "{so}");
    assert_eq!(so.lines().last(), Some(hashed), "{so}");
    // The audit trail records what was masked, and holds no clear value either.
    let export = stdout(&g.weir(&["audit", "export", "--format", "jsonl"]));
    assert!(
        export.contains("\"masked\":[\"public.customers.email\""),
        "{export}"
    );
    assert!(export.contains("\"content:email\""), "{export}");
    for s in SECRETS {
        assert!(!export.contains(s), "{s} is in the audit trail");
    }
}

#[test]
fn tables_the_catalog_has_not_seen_yet() {
    let g = gateway("");
    let tee = Tee::start(g.port);
    // Made in the client's own transaction: the catalog's connection cannot see it. Its
    // columns are judged by name and content.
    let out = g.psql(
        &tee.conninfo("alice", ALICE_TOKEN),
        "BEGIN;
CREATE TABLE fresh (id int, label text, contact_email text);
INSERT INTO fresh VALUES (7, 'plain', 'omar@corp.example');
SELECT * FROM fresh;
COMMIT;
SELECT id, label FROM fresh;
",
    );
    let so = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(so.contains("7|plain|o***@corp.example\n"), "{so}");
    assert!(so.ends_with("7|plain\n"), "{so}");
    // A copy of sensitive data under an innocent name, not yet committed: every column of
    // the relation the catalog cannot see is masked.
    let out = g.psql(
        &tee.conninfo("alice", ALICE_TOKEN),
        "BEGIN;
CREATE TABLE copied AS SELECT id, email AS x, card_number AS y FROM customers;
SELECT x, y FROM copied ORDER BY id;
COMMIT;
",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("****|****\n****|****"),
        "{}",
        stdout(&out)
    );
    tee.assert_clean();
}

#[test]
fn copy_to_stdout_is_masked_in_every_format() {
    let g = gateway("");
    let tee = Tee::start(g.port);
    let out = g.psql(
        &tee.conninfo("alice", ALICE_TOKEN),
        "COPY customers TO STDOUT;
COPY customers (id, email, phone) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';');
COPY (SELECT id, upper(email), name FROM customers ORDER BY id) TO STDOUT (FORMAT csv);
COPY misc TO STDOUT;
COPY customers TO STDOUT (FORMAT binary);
COPY (SELECT * FROM customers) TO STDOUT (FORMAT binary);
",
    );
    let so = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    tee.assert_clean();
    // Text: masked values in their columns, NULL as \N, everything else as it was.
    assert!(
        so.contains("1\tJane Doe\tj***@example.com\t**** **** **** 1111\t"),
        "{so}"
    );
    assert!(
        so.contains("\t****\t****\t\\N\t****\t{\"tier\": \"gold\"}\n"),
        "{so}"
    );
    // CSV with a header and another delimiter.
    assert!(
        so.contains("id;email;phone\n1;\"j***@example.com\";\"+* ***-***-0132\"\n"),
        "{so}"
    );
    // A query's computed column.
    assert!(so.contains("1,\"J***@EXAMPLE.COM\",Jane Doe\n"), "{so}");
    // By content in an ordinary table.
    assert!(so.contains("1\t****\t****\n"), "{so}");
}

#[test]
fn values_quoted_in_errors_are_masked() {
    let g = gateway("");
    g.cluster
        .psql("app", "CREATE UNIQUE INDEX ON customers (email)")
        .unwrap();
    let tee = Tee::start(g.port);
    let out = g.psql(
        &tee.conninfo("alice", ALICE_TOKEN),
        "INSERT INTO customers (id, email) VALUES (3, 'jane.doe@example.com');
SELECT 'jane.doe@example.com'::int;
SELECT '4111 1111 1111 1111'::numeric;
",
    );
    let se = stderr(&out);
    tee.assert_clean();
    assert!(
        se.contains("duplicate key value violates unique constraint"),
        "{se}"
    );
    assert!(se.contains("Key (email)=(****) already exists."), "{se}");
    assert!(se.contains("invalid input syntax for type integer"), "{se}");
}

/// Any value of any type, to tell NULL from not NULL.
struct AnyValue;

impl<'a> tokio_postgres::types::FromSql<'a> for AnyValue {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        _: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AnyValue)
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

#[test]
fn extended_protocol_in_binary_format_is_masked() {
    let g = gateway("");
    let tee = Tee::start(g.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&tee.conninfo("alice", ALICE_TOKEN), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // Prepared once (Parse + Describe), run twice later (Bind + Execute): the rows of the
        // later requests come without a description and in binary format.
        let stmt = client
            .prepare("SELECT id, name, email, card_number, profile, birth_date FROM customers WHERE id = $1")
            .await
            .unwrap();
        for id in [1i32, 2] {
            let row = client.query_one(&stmt, &[&id]).await.unwrap();
            let email: String = row.get(2);
            let card: String = row.get(3);
            let birth: Option<AnyValue> = row.get(5);
            assert!(email.ends_with("@example.com") || email.ends_with("@corp.example"));
            assert!(email.contains("***"), "{email}");
            assert!(card.starts_with("**** ") || card.starts_with("****-"), "{card}");
            assert!(birth.is_none());
            assert_eq!(row.get::<_, i32>(0), id);
        }
        // Computed columns through the extended protocol.
        let rows = client
            .query("SELECT upper(email), count(*) FROM customers GROUP BY 1", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        let n: i64 = rows[0].get(1);
        assert_eq!(n, 1);
    });
    tee.assert_clean();
}

#[test]
fn policy_decides_who_sees_clear_text() {
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |cluster, dir| {
            cluster.psql("app", SEED).unwrap();
            std::fs::write(
                dir.join("unmask.cedar"),
                r#"@id("ops.dba-sees-contact-data")
permit(principal in Weir::Group::"dba", action == Weir::Action::"unmask", resource)
when { resource.environment == "development" && ["email", "phone"].containsAny(context.column_tags) };
"#,
            )
            .unwrap();
            "[policy]\nfiles = [\"unmask.cedar\"]\n".into()
        },
    );
    let bob = g.psql(
        &g.conninfo("bob", BOB_TOKEN),
        "SELECT email, phone, card_number FROM customers WHERE id = 1;",
    );
    assert_eq!(
        stdout(&bob).trim(),
        "jane.doe@example.com|+1 415-555-0132|**** **** **** 1111",
        "{}",
        stderr(&bob)
    );
    let alice = g.psql(&g.alice(), "SELECT email FROM customers WHERE id = 1;");
    assert_eq!(stdout(&alice).trim(), "j***@example.com");
}

#[test]
fn ddl_reloads_the_catalog_and_notices_are_masked() {
    let g = gateway("");
    let tee = Tee::start(g.port);
    let conn = tee.conninfo("alice", ALICE_TOKEN);
    // A committed table whose column only its name can give away (the values look like
    // nothing): once the rename commits, the next request sees the new catalog.
    let out = g.psql(
        &conn,
        "CREATE TABLE logins (id int, answer text);
INSERT INTO logins VALUES (1, 'blue-horse-battery');
SELECT answer FROM logins;
ALTER TABLE logins RENAME COLUMN answer TO password;
SELECT password FROM logins;
SELECT password::varchar(40) AS p FROM logins;
DO $$ BEGIN RAISE NOTICE 'first customer: %', (SELECT email FROM customers WHERE id = 1); END $$;
",
    );
    let so = stdout(&out);
    let se = stderr(&out);
    assert!(out.status.success(), "{se}");
    let seen = tee.assert_clean();
    // Before the rename the column was not sensitive; after it, it is, in any spelling.
    assert!(
        so.contains("blue-horse-battery\nALTER TABLE\n****\n****\n"),
        "{so}"
    );
    assert_eq!(seen.matches("blue-horse-battery").count(), 1, "{seen}");
    // A free-form message cannot be cut at the value's edges: it is withheld whole.
    assert!(
        se.contains("NOTICE:  (withheld by weir: this message quoted a sensitive value)"),
        "{se}"
    );
}

/// Values content detection cannot recognize (an SSN outside the valid ranges, digits only),
/// so what masks them is lineage and the catalog: a whole row, a composite, an array of
/// either, a view's or a function's record column.
const LINEAGE_ONLY: &[&str] = &["901020037", "987654321"];

const ROWS_SEED: &str = "
CREATE TABLE people (id int PRIMARY KEY, nick text, ssn text);
INSERT INTO people VALUES (1, 'pat', '901020037'), (2, 'sam', '987654321');
CREATE TYPE person AS (nick text, ssn text);
CREATE TABLE holders (id int, who person, crowd person[]);
INSERT INTO holders VALUES (1, ROW('pat', '901020037'), ARRAY[ROW('sam', '987654321')::person]);
CREATE VIEW people_rows AS SELECT p FROM people p;
CREATE FUNCTION all_people() RETURNS SETOF people LANGUAGE sql AS 'SELECT * FROM people';
";

fn assert_no_lineage_value(text: &str, what: &str) {
    for v in LINEAGE_ONLY {
        assert!(
            !text.contains(v),
            "{v} reached the client in {what}: {text}"
        );
    }
}

#[test]
fn whole_rows_and_composites_are_masked_in_every_shape() {
    let g = gateway("");
    g.cluster.psql("app", ROWS_SEED).unwrap();
    let tee = Tee::start(g.port);
    let out = g.psql(
        &tee.conninfo("alice", ALICE_TOKEN),
        "SELECT nick FROM people ORDER BY id;
SELECT p FROM people p;
SELECT ROW(p.*) FROM people p;
SELECT ROW(p.id, p.ssn) FROM people p;
SELECT array_agg(p) FROM people p;
SELECT ARRAY[p] FROM people p;
SELECT ROW(ARRAY[p], 1) FROM people p;
SELECT (p).ssn FROM people p;
SELECT row_to_json(p) FROM people p;
SELECT who FROM holders;
SELECT crowd FROM holders;
SELECT (who).ssn FROM holders;
SELECT h FROM holders h;
SELECT ROW(h.who) FROM holders h;
SELECT * FROM people_rows;
SELECT f FROM all_people() f;
SELECT array_agg(f) FROM all_people() f;
SELECT * FROM holders;
COPY (SELECT p FROM people p) TO STDOUT;
COPY (SELECT h FROM holders h) TO STDOUT (FORMAT csv);
COPY holders TO STDOUT;
",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = tee.assert_clean();
    assert_no_lineage_value(&seen, "text results");
    // What is not sensitive in the same statements is shown.
    assert!(stdout(&out).contains("pat"), "{}", stdout(&out));

    // Binary format: whole rows and composite columns through the extended protocol.
    let mut c = RawClient::connect(tee.port, "alice", ALICE_TOKEN, "app");
    for sql in [
        "SELECT p FROM people p",
        "SELECT array_agg(p) FROM people p",
        "SELECT who, crowd FROM holders",
        "SELECT f FROM all_people() f",
        "SELECT * FROM people_rows",
    ] {
        c.send(&[
            weir_wire::frontend::Message::Parse(weir_wire::frontend::Parse {
                name: bytes::Bytes::new(),
                query: bytes::Bytes::from(sql.to_owned()),
                param_types: vec![],
            }),
            weir_wire::frontend::Message::Bind(weir_wire::frontend::Bind {
                portal: bytes::Bytes::new(),
                statement: bytes::Bytes::new(),
                param_formats: vec![],
                params: vec![],
                result_formats: vec![1],
            }),
            weir_wire::frontend::Message::Execute {
                portal: bytes::Bytes::new(),
                max_rows: 0,
            },
            weir_wire::frontend::Message::Sync,
        ]);
        let (msgs, _) = c.until_ready();
        assert!(first_error(&msgs).is_none(), "{sql}: {msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| matches!(m, weir_wire::backend::Message::DataRow(_))),
            "{sql}: {msgs:?}"
        );
    }
    assert_no_lineage_value(
        &String::from_utf8_lossy(&tee.seen.lock().unwrap()),
        "binary results",
    );
}

/// Aggregates and predicates whose result carries no value of the column come back exact:
/// counting is not disclosure. Everything else derived from a sensitive column stays masked.
#[test]
fn counts_null_tests_and_exists_come_back_exact() {
    let g = gateway("");
    g.cluster.psql("app", ROWS_SEED).unwrap();
    let tee = Tee::start(g.port);
    let out = g.psql(
        &tee.conninfo("alice", ALICE_TOKEN),
        "SELECT count(*), count(DISTINCT email), count(email), sum(id) FROM customers;
SELECT email IS NULL, email IS NOT NULL, ssn IS NULL FROM customers ORDER BY id;
SELECT EXISTS (SELECT 1 FROM customers WHERE email LIKE '%@%');
SELECT id, count(ssn) FILTER (WHERE ssn IS NOT NULL) FROM customers GROUP BY id ORDER BY id;
SELECT count(p), count(DISTINCT p.ssn) FROM people p;
SELECT count(email) OVER () FROM customers ORDER BY id LIMIT 1;
SELECT name, count(card_number) FROM customers GROUP BY name ORDER BY name;
SELECT max(email) FROM customers;
SELECT count(email)::text || max(email) FROM customers;
",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let so = stdout(&out);
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(lines.len(), 12, "{so}");
    assert_eq!(
        lines[..9],
        [
            "2|2|2|3",
            "f|t|f",
            "f|t|f",
            "t",
            "1|1",
            "2|1",
            "2|2",
            "2",
            "Jane Doe|1",
        ],
        "{so}"
    );
    assert_eq!(lines[9], "Omar Ali|1", "{so}");
    // A value derived from the column is still masked.
    assert!(lines[10].contains("***"), "{so}");
    assert!(lines[11].contains("***"), "{so}");
    tee.assert_clean();
}
