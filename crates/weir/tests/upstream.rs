//! Upstream authentication and transport: SCRAM-SHA-256 (every other test), md5, trust,
//! and TLS to the upstream with and without verification.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

fn setup(cluster: &Cluster, dir: &Path) -> String {
    // md5 and trust roles, and a role that may only log in over TLS.
    cluster
        .psql(
            "postgres",
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN SUPERUSER PASSWORD 'md5-secret';
             CREATE ROLE trustuser LOGIN SUPERUSER;
             SET password_encryption = 'scram-sha-256'; CREATE ROLE tlsonly LOGIN SUPERUSER PASSWORD 'tls-secret';",
        )
        .unwrap();
    let hba = cluster.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all md5user 127.0.0.1/32 md5\nhost all trustuser 127.0.0.1/32 trust\nhostssl all tlsonly 127.0.0.1/32 scram-sha-256\nhostnossl all tlsonly 127.0.0.1/32 reject\n{old}"
        ),
    )
    .unwrap();

    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    openssl(
        dir,
        &[
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
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
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
        ],
    );
    for f in ["server.crt", "server.key"] {
        let dest = cluster.data_dir().join(f);
        std::fs::copy(dir.join(f), &dest).unwrap();
        Command::new("chown")
            .arg("postgres")
            .arg(&dest)
            .status()
            .unwrap();
        Command::new("chmod")
            .arg("600")
            .arg(&dest)
            .status()
            .unwrap();
    }
    cluster
        .psql("postgres", "ALTER SYSTEM SET ssl = on")
        .unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    std::fs::write(dir.join("md5pw"), "md5-secret\n").unwrap();
    std::fs::write(dir.join("trustpw"), "unused\n").unwrap();
    std::fs::write(dir.join("tlspw"), "tls-secret\n").unwrap();
    let target = |name: &str, user: &str, pw: &str, tls: &str| {
        format!(
            "\n[[target]]\nname = \"{name}\"\nengine = \"postgres\"\nenvironment = \"staging\"\nupstream = \"127.0.0.1:{}\"\ndatabase = \"app\"\nuser = \"{user}\"\npassword_file = \"{pw}\"\n{tls}\n",
            cluster.port
        )
    };
    [
        target("md5", "md5user", "md5pw", ""),
        target("trust", "trustuser", "trustpw", ""),
        target("tls", "tlsonly", "tlspw", "upstream_tls = \"verify-full\"\nupstream_ca = \"ca.pem\"\nupstream_server_name = \"localhost\""),
        target("tls_ip", "tlsonly", "tlspw", "upstream_tls = \"verify-full\"\nupstream_ca = \"ca.pem\""),
        target("tls_require", "tlsonly", "tlspw", "upstream_tls = \"require\""),
        target("tls_wrong_ca", "tlsonly", "tlspw", "upstream_tls = \"verify-full\"\nupstream_ca = \"other-ca.pem\""),
        target("tls_plain", "tlsonly", "tlspw", ""),
    ]
    .concat()
}

fn query(g: &Gateway, target: &str, sql: &str) -> (String, String) {
    let conn = format!(
        "host=127.0.0.1 port={} dbname={target} user=alice password={ALICE_TOKEN} sslmode=disable",
        g.port
    );
    let out = g.psql(&conn, sql);
    (stdout(&out), stderr(&out))
}

#[test]
fn upstream_auth_methods_and_tls() {
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        setup,
    );
    let ssl = "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n";

    let (out, err) = query(&g, "md5", ssl);
    assert_eq!(out.trim(), "md5user false", "{err}");
    let (out, err) = query(&g, "trust", ssl);
    assert_eq!(out.trim(), "trustuser false", "{err}");
    for t in ["tls", "tls_ip", "tls_require"] {
        let (out, err) = query(&g, t, ssl);
        assert_eq!(out.trim(), "tlsonly true", "{t}: {err}\n{}", g.log());
    }

    // A certificate from another CA is refused; the client learns only that the target is
    // unreachable, the gateway log says why.
    let (out, err) = query(&g, "tls_wrong_ca", ssl);
    assert!(out.is_empty());
    assert!(
        err.contains("cannot connect to target \"tls_wrong_ca\""),
        "{err}"
    );
    assert!(
        g.log().contains("UnknownIssuer") || g.log().contains("certificate"),
        "{}",
        g.log()
    );

    // Without TLS the upstream rejects the role; no credential detail reaches the client.
    let (_, err) = query(&g, "tls_plain", ssl);
    assert!(err.contains("target \"tls_plain\""), "{err}");
    assert!(!err.contains("tls-secret"));
}
