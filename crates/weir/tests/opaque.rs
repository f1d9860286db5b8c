//! Masking when lineage is lost: functions whose reads Weir cannot see, SQL run from text,
//! cursors opened by functions — and no path that releases a statement (an approval, policy's
//! auto-approval, a grant) unmasks anything. Beside the leaks, queries that use functions and
//! must come back exact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

/// SSNs content detection does not recognize: only lineage and fail-closed rules mask them.
const CLEAR: &[&str] = &["901020037", "987654321", "pat@nowhere.example"];

const SEED: &str = "
CREATE TABLE people (id int PRIMARY KEY, nick text, email text, ssn text);
INSERT INTO people VALUES (1, 'pat', 'pat@nowhere.example', '901020037'), (2, 'sam', NULL, '987654321');
CREATE TABLE products (id int PRIMARY KEY, title text, price int);
INSERT INTO products VALUES (1, 'lamp', 30), (2, 'desk', 200);
CREATE FUNCTION all_people() RETURNS SETOF people LANGUAGE sql AS 'SELECT * FROM people';
CREATE FUNCTION ssn_of(int) RETURNS text LANGUAGE sql AS 'SELECT ssn FROM people WHERE id = $1';
CREATE FUNCTION pl_people() RETURNS TABLE (n text, s text) LANGUAGE plpgsql AS
  $$ BEGIN RETURN QUERY SELECT nick, ssn FROM people; END $$;
CREATE FUNCTION dyn_ssn() RETURNS SETOF text LANGUAGE plpgsql AS
  $$ BEGIN RETURN QUERY EXECUTE 'SELECT ssn FROM ' || 'people'; END $$;
CREATE FUNCTION open_cursor() RETURNS refcursor LANGUAGE plpgsql AS
  $$ DECLARE c refcursor := 'people_cursor'; BEGIN OPEN c FOR SELECT ssn || '' AS s FROM people; RETURN c; END $$;
CREATE FUNCTION cheap() RETURNS SETOF products LANGUAGE sql AS 'SELECT * FROM products WHERE price < 100';
CREATE FUNCTION vouched() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN 'fine'; END $$;
";

fn gateway() -> Gateway {
    Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, dir| {
            c.psql("app", SEED).unwrap();
            std::fs::write(
                dir.join("auto.cedar"),
                "@id(\"test.oncall-approves-itself\")\npermit (principal in Weir::Group::\"oncall\", action == Weir::Action::\"auto_approve\", resource);\n",
            )
            .unwrap();
            format!(
                r#"
[masking]
clean_functions = ["public.vouched"]

[[target]]
name = "prod"
engine = "postgres"
environment = "production"
upstream = "127.0.0.1:{}"
database = "app"
user = "postgres"
password_file = "upstream-password"

[[identity.static]]
name = "carol"
kind = "human"
groups = ["oncall"]
token = "carol-test-token"

[policy]
files = ["auto.cedar"]

[approvals]
timeout = "0s"
approvers = ["dba"]
"#,
                c.port
            )
        },
    )
}

fn assert_masked(text: &str, what: &str) {
    for v in CLEAR {
        assert!(
            !text.contains(v),
            "{v} reached the client through {what}: {text}"
        );
    }
}

#[test]
fn results_of_functions_weir_cannot_see_into_are_masked() {
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, _| {
            c.psql("app", SEED).unwrap();
            "[masking]\nclean_functions = [\"public.vouched\"]\n".into()
        },
    );
    for sql in [
        "SELECT email, ssn FROM all_people()",
        "SELECT * FROM all_people()",
        "SELECT p FROM all_people() p",
        "SELECT ssn_of(1), ssn_of(2)",
        "SELECT * FROM pl_people()",
        "SELECT s FROM pl_people()",
        "SELECT * FROM dyn_ssn()",
        "SELECT query_to_xml('select email, ssn from people', true, false, '')",
        "SELECT table_to_xml('people', true, false, '')",
        "SELECT query_to_xml('select ssn from people', true, false, '')::text",
        "BEGIN; SELECT open_cursor(); FETCH ALL FROM people_cursor; COMMIT",
    ] {
        let out = g.psql(&g.alice(), &format!("{sql};\n"));
        assert!(!stderr(&out).contains("ERROR"), "{sql}: {}", stderr(&out));
        assert_masked(&stdout(&out), sql);
    }
    // The same through the extended protocol, binary results.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&g.alice(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for sql in [
            "SELECT ssn FROM all_people()",
            "SELECT s FROM pl_people()",
            "SELECT ssn_of(1)",
        ] {
            for row in c.query(sql, &[]).await.unwrap() {
                let v: Option<String> = row.get(0);
                assert!(
                    v.as_deref().is_none_or(|v| !CLEAR.contains(&v)),
                    "{sql}: {v:?}"
                );
            }
        }
    });
}

#[test]
fn functions_over_clean_data_come_back_exact() {
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |c, _| {
            c.psql("app", SEED).unwrap();
            "[masking]\nclean_functions = [\"public.vouched\"]\n".into()
        },
    );
    let out = g.psql(
        &g.alice(),
        "SELECT now() IS NOT NULL, count(*) FROM generate_series(1, 5);
SELECT title, price FROM cheap() ORDER BY id;
SELECT vouched();
SELECT count(*) FROM people;
SELECT pg_catalog.format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'products'::regclass AND attnum = 2;
SELECT upper(title) FROM products ORDER BY id LIMIT 1;
SELECT pg_get_functiondef('cheap'::regproc) LIKE '%products%';
",
    );
    assert!(!stderr(&out).contains("ERROR"), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["t|5", "lamp|30", "fine", "2", "text", "LAMP", "t"],
        "{}",
        stdout(&out)
    );
    // What psql's \d runs: catalog functions, exact.
    let out = g.psql(&g.alice(), "\\d products\n\\df cheap\n");
    assert!(
        stdout(&out).contains("price") && stdout(&out).contains("cheap"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("****"), "{}", stdout(&out));
}

/// An approval decides what a statement may do, never who may see clear values.
#[test]
fn no_path_that_releases_a_statement_unmasks_it() {
    let g = gateway();
    let prod =
        |user: &str, token: &str| g.conninfo(user, token).replace("dbname=app", "dbname=prod");
    let sql = "SELECT nick, ssn, email FROM all_people() ORDER BY 1;\n";
    // 1. An approver's approval (the function call is an unknown effect in production).
    let out = g.psql(&prod("alice", ALICE_TOKEN), sql);
    let err = stderr(&out);
    let id = err
        .split("request ")
        .nth(1)
        .unwrap()
        .split([':', ' '])
        .next()
        .unwrap()
        .to_owned();
    assert!(g.weir(&["approve", &id, "--as", "bob"]).status.success());
    let out = g.psql(&prod("alice", ALICE_TOKEN), sql);
    assert_eq!(
        stdout(&out).lines().count(),
        2,
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_masked(&stdout(&out), "an approved statement");
    // 2. Policy's auto-approval.
    let out = g.psql(&prod("carol", "carol-test-token"), sql);
    assert_eq!(
        stdout(&out).lines().count(),
        2,
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_masked(&stdout(&out), "an auto-approved statement");
    // 3. A just-in-time grant.
    let out = g.weir(&[
        "request", "prod", "--for", "1h", "--reason", "INC-7", "--as", "alice",
    ]);
    let request = stdout(&out).lines().last().unwrap().trim().to_owned();
    assert!(g
        .weir(&["approve", &request, "--as", "bob"])
        .status
        .success());
    // The gateway reads grants every 250 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        let out = g.psql(
            &prod("alice", ALICE_TOKEN),
            "SELECT ssn_of(1), ssn_of(2);\nSELECT * FROM pl_people();\n",
        );
        if !stderr(&out).contains("denied") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "{}", stderr(&out));
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_masked(&stdout(&out), "a statement run on a grant");
}
