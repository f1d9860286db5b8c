//! Logging in with ID tokens from a real OpenID Provider: `oidc-provider` (npm), started on a
//! loopback port with the device-code grant; tokens are obtained through that grant (the
//! user's side driven by the provider's test route). Time moves by the clock file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POLICY: &str = r#"
@id("test.dba-deletes")
@reason("only the dba group deletes")
forbid (principal, action == Weir::Action::"delete", resource)
unless { principal in Weir::Group::"dba" };
"#;

struct Provider {
    child: Child,
    port: u16,
    keys: PathBuf,
}

impl Provider {
    fn start(port: u16, keys: PathBuf) -> Provider {
        Provider::start_with(port, keys, "")
    }

    /// With `redirect_uris` (comma-separated), client `weir` may also use the
    /// authorization-code grant (with PKCE) back to them.
    fn start_with(port: u16, keys: PathBuf, redirect_uris: &str) -> Provider {
        let dir = repo_root().join("tests/clients/oidc");
        assert!(
            dir.join("node_modules").exists(),
            "run scripts/test (it installs oidc-provider into tests/clients/oidc)"
        );
        let child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .env("PORT", port.to_string())
            .env("KEYS_FILE", &keys)
            .env("REDIRECT_URIS", redirect_uris)
            .env(
                "ACCOUNTS",
                r#"{"alice":{"email":"alice@example.com","groups":["dba"]},"carol":{"email":"carol@example.com","groups":[]}}"#,
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the OpenID Provider did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Provider { child, port, keys }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An ID token for `account`, through the device-code grant of client `client`.
    fn token(&self, account: &str, client: &str) -> String {
        let post = |path: &str, form: &[(&str, &str)]| -> serde_json::Value {
            let mut cmd = Command::new("curl");
            cmd.args(["-s", "-X", "POST", &format!("{}{path}", self.issuer())]);
            for (k, v) in form {
                cmd.args(["--data-urlencode", &format!("{k}={v}")]);
            }
            let out = cmd.output().unwrap();
            serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
        };
        let auth = post(
            "/device/auth",
            &[("client_id", client), ("scope", "openid email groups")],
        );
        let user_code = auth["user_code"].as_str().unwrap();
        let done = Command::new("curl")
            .args(["-s", "-G", &format!("{}/test/device", self.issuer())])
            .args(["--data-urlencode", &format!("user_code={user_code}")])
            .args(["--data-urlencode", &format!("account={account}")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&done.stdout), "device-flow-done");
        let tokens = post(
            "/token",
            &[
                ("client_id", client),
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", auth["device_code"].as_str().unwrap()),
            ],
        );
        tokens["id_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{tokens}"))
            .to_owned()
    }

    /// Restarts with a fresh key set (new key ids): the IdP rotated its keys.
    fn rotate(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_file(&self.keys).unwrap();
        *self = Provider::start(self.port, self.keys.clone());
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn login(g: &Gateway, user: &str, token: &str, sql: &str) -> std::process::Output {
    g.psql(
        &format!(
            "host=127.0.0.1 port={} dbname=app user={user} password={token} sslmode=disable",
            g.port
        ),
        sql,
    )
}

#[test]
fn id_tokens_from_a_real_openid_provider() {
    let port = weir::cluster::free_port().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let mut idp = Provider::start(port, keys_dir.path().join("keys.json"));
    let issuer = idp.issuer();
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |cluster, dir| {
            cluster
                .psql(
                    "app",
                    "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5);",
                )
                .unwrap();
            std::fs::write(dir.join("dba.cedar"), POLICY).unwrap();
            format!(
                "[identity]\nissuer = \"{issuer}\"\naudience = \"weir\"\ngroups_claim = \"groups\"\nclaims = [\"sub\", \"email_verified\"]\n\n[policy]\nfiles = [\"dba.cedar\"]\n"
            )
        },
    );
    let refused = |out: &std::process::Output| {
        !out.status.success() && stderr(out).contains("weir: authentication failed")
    };

    // A valid token logs in; its groups reach policy.
    let alice = idp.token("alice", "weir");
    let out = login(
        &g,
        "alice@example.com",
        &alice,
        "DELETE FROM t WHERE id = 1;\n",
    );
    assert_eq!(stdout(&out).trim(), "DELETE 1", "{}", stderr(&out));
    // The trail records a person from the IdP with groups and the chosen claims.
    let opened = g
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "connection_opened" && e["identity"] == "alice@example.com")
        .expect("alice's session is in the trail");
    assert_eq!(opened["identity_kind"], "human");
    assert_eq!(opened["auth"], "oidc");
    assert_eq!(opened["groups"], serde_json::json!(["dba"]));
    assert_eq!(
        opened["attributes"],
        serde_json::json!({"sub": "alice", "email_verified": "true"})
    );
    let carol = idp.token("carol", "weir");
    let out = login(
        &g,
        "carol@example.com",
        &carol,
        "DELETE FROM t WHERE id = 2;\n",
    );
    assert!(
        stderr(&out).contains("weir: denied by test.dba-deletes"),
        "{}",
        stderr(&out)
    );
    // Someone else's token, a token for another application, a tampered signature.
    assert!(refused(&login(
        &g,
        "carol@example.com",
        &alice,
        "SELECT 1;\n"
    )));
    let other = idp.token("alice", "other");
    assert!(refused(&login(
        &g,
        "alice@example.com",
        &other,
        "SELECT 1;\n"
    )));
    let mut tampered = alice.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert!(refused(&login(
        &g,
        "alice@example.com",
        &tampered,
        "SELECT 1;\n"
    )));

    // A token from another issuer (another provider, its own keys) is refused.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = Provider::start(
        weir::cluster::free_port().unwrap(),
        stranger_dir.path().join("keys.json"),
    );
    let foreign = stranger.token("alice", "weir");
    assert!(refused(&login(
        &g,
        "alice@example.com",
        &foreign,
        "SELECT 1;\n"
    )));

    // Expired: the clock moves past the token's hour (and the skew).
    g.set_clock_offset(3600 + 120);
    assert!(refused(&login(
        &g,
        "alice@example.com",
        &alice,
        "SELECT 1;\n"
    )));
    g.set_clock_offset(0);
    assert!(login(&g, "alice@example.com", &alice, "SELECT 1;\n")
        .status
        .success());

    // The IdP rotates its keys: the unknown key id makes Weir fetch the new set (once the
    // minimum interval since the last fetch has passed on its clock).
    idp.rotate();
    let rotated = idp.token("alice", "weir");
    g.set_clock_offset(11);
    let out = login(
        &g,
        "alice@example.com",
        &rotated,
        "SELECT count(*) FROM t;\n",
    );
    assert_eq!(stdout(&out).trim(), "4", "{}", stderr(&out));
    // The old key is gone from the set.
    g.set_clock_offset(30);
    assert!(refused(&login(
        &g,
        "alice@example.com",
        &alice,
        "SELECT 1;\n"
    )));

    let trail = stdout(&g.weir(&["audit", "search", "--identity", "carol@example.com"]));
    assert!(
        trail.contains("auth_failed") || trail.contains("test.dba-deletes"),
        "{trail}"
    );
}

#[test]
fn weir_login_then_weir_connect() {
    let port = weir::cluster::free_port().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let idp = Provider::start(port, keys_dir.path().join("keys.json"));
    let issuer = idp.issuer();
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |_, _| {
            format!(
                "[identity]\nissuer = \"{issuer}\"\naudience = \"weir\"\nscopes = \"openid email groups offline_access\"\n"
            )
        },
    );
    let cache = g.dir.path().join("home/weir/token.json");
    let weir = |args: &[&str]| {
        let mut cmd = Command::new(weir_bin());
        cmd.args(args)
            .arg("--config")
            .arg(&g.config)
            .env("WEIR_TOKEN_CACHE", &cache)
            .env("WEIR_CLOCK_FILE", g.clock_file())
            .stdin(Stdio::null());
        cmd
    };

    // weir login prints the code; the "user" confirms it at the provider; login finishes.
    let mut login = weir(&["login"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(login.stdout.take().unwrap());
    let mut user_code = String::new();
    let mut printed = String::new();
    while user_code.is_empty() {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "{printed}"
        );
        printed.push_str(&line);
        if let Some(code) = line.trim().strip_prefix("user_code=") {
            user_code = code.to_owned();
        }
    }
    assert!(
        printed.contains(&format!("{issuer}/device?user_code=")),
        "{printed}"
    );
    let done = Command::new("curl")
        .args(["-s", "-G", &format!("{issuer}/test/device")])
        .args(["--data-urlencode", &format!("user_code={user_code}")])
        .args(["--data-urlencode", "account=alice"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&done.stdout), "device-flow-done");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(login.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("logged in as alice@example.com"), "{rest}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // weir connect --print gives a connection string that works as it is.
    let print = |g: &Gateway| {
        let out = weir(&["connect", "app", "--print"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let line = stdout(&out).trim().to_owned();
        assert!(
            line.starts_with("host=localhost hostaddr=127.0.0.1 sslrootcert='")
                && line.contains(&format!(
                    "weir-tls-cert.pem' port={} dbname='app' user='alice@example.com' sslmode=verify-full gssencmode=disable password=",
                    g.port
                )),
            "{line}"
        );
        line
    };
    let first = print(&g);
    let ok = g.psql(&first, "SELECT 'through weir';\n");
    assert_eq!(stdout(&ok).trim(), "through weir", "{}", stderr(&ok));

    // The listener must prove it is the gateway before the token is sent: trusting another
    // CA, psql refuses the same gateway.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(g.dir.path().join("other-ca.pem"), other.cert.pem()).unwrap();
    let with = |name: &str, line: &str| {
        let path = g.dir.path().join(name);
        let text = std::fs::read_to_string(&g.config).unwrap();
        std::fs::write(
            &path,
            text.replacen("[gateway]\n", &format!("[gateway]\n{line}\n"), 1),
        )
        .unwrap();
        Command::new(weir_bin())
            .args(["connect", "app", "--print", "--config"])
            .arg(&path)
            .env("WEIR_TOKEN_CACHE", &cache)
            .env("WEIR_CLOCK_FILE", g.clock_file())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = with("other-ca.toml", "tls_ca = \"other-ca.pem\"");
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = g.psql(stdout(&out).trim(), "SELECT 'must not run';\n");
    assert!(
        stderr(&refused).contains("certificate verify failed"),
        "{}{}",
        stdout(&refused),
        stderr(&refused)
    );
    // A certificate of its own (tls_cert) without the CA to check it by: nothing to verify
    // with, so weir connect refuses rather than send the token unverified.
    let pair = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(g.dir.path().join("own-cert.pem"), pair.cert.pem()).unwrap();
    std::fs::write(
        g.dir.path().join("own-key.pem"),
        pair.signing_key.serialize_pem(),
    )
    .unwrap();
    let out = with(
        "own-cert.toml",
        "tls_cert = \"own-cert.pem\"\ntls_key = \"own-key.pem\"",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("tls_cert is set but tls_ca is not"),
        "{}",
        stderr(&out)
    );

    // Close to expiry, connect refreshes the token with the refresh token first (the ID
    // token itself may come back identical within the same second; the refresh token is
    // rotated by the provider, so the cache shows the refresh).
    let refresh_token = |cache: &std::path::Path| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(cache).unwrap()).unwrap();
        v["refresh_token"].as_str().unwrap().to_owned()
    };
    let before = refresh_token(&cache);
    g.set_clock_offset(3600 - 30);
    let second = print(&g);
    assert_ne!(before, refresh_token(&cache), "the login was not refreshed");
    let ok = g.psql(&second, "SELECT 'refreshed';\n");
    assert_eq!(stdout(&ok).trim(), "refreshed", "{}", stderr(&ok));

    // A login cached from another issuer is not used (nor refreshed there).
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    v["issuer"] = serde_json::json!("https://idp.other.example");
    std::fs::write(&cache, v.to_string()).unwrap();
    let out = weir(&["connect", "app", "--print"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is from \"https://idp.other.example\", not from [identity] issuer"),
        "{}",
        stderr(&out)
    );
}

/// With `username_claim = "sub"` an IdP name can be any string, even a service's or an
/// agent's: such a login is refused, so no person passes for one (nor one for a person).
#[test]
fn a_person_from_the_idp_cannot_take_an_agents_name() {
    let port = weir::cluster::free_port().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let idp = Provider::start(port, keys_dir.path().join("keys.json"));
    let issuer = idp.issuer();
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |_, _| {
            format!(
                "[identity]\nissuer = \"{issuer}\"\naudience = \"weir\"\nusername_claim = \"sub\"\n"
            )
        },
    );
    // carol at the IdP; "carol" at Weir is an agent's token.
    let out = g.weir(&["token", "create", "--name", "carol", "--kind", "agent"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = login(&g, "carol", &idp.token("carol", "weir"), "SELECT 1;\n");
    assert!(
        stderr(&refused).contains("weir: authentication failed for \"carol\""),
        "{}",
        stderr(&refused)
    );
    let failed = g
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "auth_failed" && e["claimed"] == "carol")
        .expect("the refusal is in the trail");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("belongs to an identity of kind agent"),
        "{failed}"
    );
    // alice is a person both in the config and at the IdP: her ID token logs in.
    let out = login(&g, "alice", &idp.token("alice", "weir"), "SELECT 1;\n");
    assert_eq!(stdout(&out).trim(), "1", "{}", stderr(&out));
}

#[test]
fn an_agent_acts_for_a_person_from_the_idp_while_they_sign_in() {
    let port = weir::cluster::free_port().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let idp = Provider::start(port, keys_dir.path().join("keys.json"));
    let issuer = idp.issuer();
    let g = Gateway::start_custom(
        Options {
            fast: true,
            ..Default::default()
        },
        |_, _| {
            format!(
                "[identity]\nissuer = \"{issuer}\"\naudience = \"weir\"\nusername_claim = \"sub\"\ndelegation_window = \"1h\"\n"
            )
        },
    );
    let create = || {
        g.weir(&[
            "token",
            "create",
            "--name",
            "aide",
            "--kind",
            "agent",
            "--on-behalf-of",
            "carol",
        ])
    };
    // Weir has never seen carol: nobody can act for her.
    let refused = create();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("carol has no active identity"),
        "{}",
        stderr(&refused)
    );
    // carol signs in with her ID token; now her agent may act for her.
    let out = login(&g, "carol", &idp.token("carol", "weir"), "SELECT 1;\n");
    assert_eq!(stdout(&out).trim(), "1", "{}", stderr(&out));
    let created = create();
    assert!(created.status.success(), "{}", stderr(&created));
    let aide = stdout(&created).lines().last().unwrap().trim().to_owned();
    let out = login(&g, "aide", &aide, "SELECT 1;\n");
    assert_eq!(stdout(&out).trim(), "1", "{}", stderr(&out));
    // Two hours without a sign-in (delegation_window = 1h): the agent stops.
    g.set_clock_offset(2 * 3600);
    let out = login(&g, "aide", &aide, "SELECT 1;\n");
    assert!(
        stderr(&out).contains("weir: authentication failed for \"aide\""),
        "{}",
        stderr(&out)
    );
    let failed = g
        .audit_events()
        .into_iter()
        .find(|e| e["event"] == "auth_failed" && e["claimed"] == "aide")
        .expect("the refusal is in the trail");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("has not signed in with the identity provider within"),
        "{failed}"
    );
}

/// The console's sign-in with the issuer: authorization code with PKCE, followed by curl as
/// a browser would (cookies kept), into a console session for the ID token's identity.
#[test]
fn the_console_signs_in_with_the_issuer_by_authorization_code_and_pkce() {
    let port = weir::cluster::free_port().unwrap();
    let http_port = weir::cluster::free_port().unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    let console = format!("http://127.0.0.1:{http_port}");
    let idp = Provider::start_with(
        port,
        keys_dir.path().join("keys.json"),
        &format!("{console}/console/oidc/callback"),
    );
    let issuer = idp.issuer();
    let mut g = Gateway::start_with(
        Options {
            fast: true,
            ..Default::default()
        },
        &format!(
            "[identity]\nissuer = \"{issuer}\"\naudience = \"weir\"\ngroups_claim = \"groups\"\n"
        ),
    );
    let config = std::fs::read_to_string(&g.config).unwrap().replacen(
        "[gateway]\n",
        &format!("[gateway]\nhttp_listen = \"127.0.0.1:{http_port}\"\n"),
        1,
    );
    std::fs::write(&g.config, config).unwrap();
    g.terminate();
    g.restart();

    let curl = |args: &[&str]| -> String {
        let out = Command::new("curl").arg("-s").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let config = curl(&[&format!("{console}/console/config")]);
    assert!(config.contains("\"issuer\":true"), "{config}");
    assert_eq!(
        curl(&[&format!("{issuer}/test/account?account=alice")]),
        "ok"
    );
    let jar = keys_dir.path().join("cookies");
    let jar = jar.to_str().unwrap();
    // The start redirects to the issuer with a PKCE challenge; the issuer signs alice in
    // and sends the browser back; Weir redeems the code and lands on the console.
    let start = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{redirect_url}",
        &format!("{console}/console/oidc/start"),
    ]);
    assert!(start.starts_with(&format!("{issuer}/auth?")), "{start}");
    assert!(
        start.contains("code_challenge_method=S256") && start.contains("nonce="),
        "{start}"
    );
    let landed = curl(&[
        "-L",
        "-c",
        jar,
        "-b",
        jar,
        "-o",
        "/dev/null",
        "-w",
        "%{url_effective} %{http_code}",
        &format!("{console}/console/oidc/start"),
    ]);
    assert_eq!(landed, format!("{console}/ 200"), "{}", g.log());
    let me = curl(&["-b", jar, &format!("{console}/console/me")]);
    let me: serde_json::Value = serde_json::from_str(&me).unwrap_or_else(|_| panic!("{me}"));
    assert_eq!(me["identity"], "alice@example.com", "{me}");
    assert_eq!(me["may"]["view_approvals"], true, "alice is in dba: {me}");
    // A callback with a state Weir did not issue (or one already used) opens nothing.
    let forged = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{console}/console/oidc/callback?code=x&state=forged"),
    ]);
    assert_eq!(forged, "400");
}
