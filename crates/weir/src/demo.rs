//! `weir demo`: a throwaway PostgreSQL with sample PII, demo identities, and the gateway in
//! front, all removed on Ctrl-C. When the machine has MariaDB's server binaries, a
//! throwaway MariaDB with the same shop runs behind the MySQL listener too.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use weir_config::Config;
use weir_proxy::Gateway;

use crate::cluster::{Cluster, Options};
use crate::mariadb::Mariadb;

/// The account Weir logs in to the demo's MariaDB as.
const MARIADB_USER: &str = "weir";

const SEED: &str = include_str!("demo_seed.sql");

/// Demo identities: (name, kind, groups, token).
pub const IDENTITIES: &[(&str, &str, &str, &str)] = &[
    ("alice", "human", "developers", "alice-demo-token"),
    ("dana", "human", "dba", "dana-demo-token"),
    ("ci-bot", "service", "ci", "ci-bot-demo-token"),
    ("claude", "agent", "agents", "claude-demo-token"),
];

pub fn run(listen: &str, store: Option<&str>) -> anyhow::Result<()> {
    crate::serve::install_crypto();
    eprintln!("weir demo: starting a throwaway PostgreSQL…");
    let cluster = Cluster::start(Options::default())?;
    for db in ["shop", "shop_dev"] {
        cluster.psql("postgres", &format!("CREATE DATABASE {db}"))?;
        let seed = cluster.dir().join("seed.sql");
        std::fs::write(&seed, SEED)?;
        cluster.psql_file(db, &seed)?;
    }

    let mariadb = start_mariadb(&cluster);

    let listen = match std::net::TcpListener::bind(listen) {
        Ok(l) => l.local_addr()?.to_string(),
        Err(_) => format!("127.0.0.1:{}", crate::cluster::free_port()?),
    };
    // The HTTP API and `POST /mcp`, on a free port.
    let http = format!("127.0.0.1:{}", crate::cluster::free_port()?);
    let config_path = cluster.dir().join("weir.toml");
    let password_path = cluster.dir().join("upstream-password");
    std::fs::write(&password_path, &cluster.password)?;
    // The MySQL listener on 3307 (the contract's example) when it is free.
    let mysql = match &mariadb {
        Some(m) => {
            let addr = match std::net::TcpListener::bind("127.0.0.1:3307") {
                Ok(l) => l.local_addr()?.to_string(),
                Err(_) => format!("127.0.0.1:{}", crate::cluster::free_port()?),
            };
            Some((addr, m.port))
        }
        None => None,
    };
    std::fs::write(
        &config_path,
        config_text(&listen, &http, cluster.port, mysql.as_ref(), store),
    )?;
    std::fs::create_dir_all(cluster.dir().join("policy"))?;
    std::fs::write(cluster.dir().join("policy/agents.cedar"), AGENT_POLICY)?;
    let config = Config::load(&config_path)?;
    let store = crate::serve::open_store(&config)?;
    let policy = crate::serve::load_policy(&config)?;
    // The real trail (SQLite beside the demo's config, signed checkpoints), so `weir audit
    // verify | search | replay | export` work on the demo as in production.
    let audit = crate::serve::open_audit(&config)?;

    let rt = crate::serve::runtime()?;
    let sink = Arc::clone(&audit);
    rt.block_on(async {
        let stop = crate::serve::shutdown_signal();
        let gateway = Gateway::bind(config, store, policy, sink)
            .await
            .context("starting the gateway")?;
        let addr = gateway.local_addr()?;
        let mysql = gateway
            .mysql_addr()
            .zip(mariadb.as_ref())
            .map(|(a, m)| (a.to_string(), m.port));
        println!(
            "{}",
            banner(&addr.to_string(), &http, &cluster, mysql, &config_path)
        );
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = tx.send(true);
        });
        gateway.run(rx).await;
        anyhow::Ok(())
    })?;
    drop(rt);
    audit.close();
    if mariadb.is_some() {
        eprintln!("weir demo: stopping MariaDB");
    }
    drop(mariadb);
    eprintln!(
        "weir demo: stopping PostgreSQL and removing {}",
        cluster.dir().display()
    );
    drop(cluster);
    Ok(())
}

/// A throwaway MariaDB with the shop, and Weir's password for it in the demo directory; or
/// `None` (said on stderr) when the machine has no MariaDB or it does not start: the demo
/// goes on with PostgreSQL alone.
fn start_mariadb(cluster: &Cluster) -> Option<Mariadb> {
    if !Mariadb::available() {
        eprintln!("weir demo: no MariaDB server binaries here (mariadb-server): PostgreSQL only");
        return None;
    }
    eprintln!("weir demo: starting a throwaway MariaDB…");
    let started = Mariadb::start(crate::mariadb::Options::default()).and_then(|m| {
        let password = random_password()?;
        std::fs::write(cluster.dir().join("mariadb-password"), &password)?;
        m.sql(&format!(
            "CREATE USER '{MARIADB_USER}'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}');\n\
             GRANT ALL ON shop.* TO '{MARIADB_USER}'@'127.0.0.1';\n{}",
            crate::mariadb::SHOP_SEED
        ))?;
        Ok(m)
    });
    match started {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("weir demo: MariaDB did not start, going on with PostgreSQL only: {e:#}");
            None
        }
    }
}

/// 32 hex characters from the OS's random source.
fn random_password() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random password: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The demo's own rule, beside the built-in ones: policy is code the operator writes.
const AGENT_POLICY: &str = r#"// Written by `weir demo`: agents never write in production, not even with an approval.
@id("demo.agents-never-write-in-production")
@reason("the demo's policy (policy/agents.cedar) lets agents only read in production")
forbid (principal, action, resource)
when {
  principal.kind == "agent" &&
  resource.environment == "production" &&
  context.writes
};
"#;

/// `mysql`: the MySQL listener's address and the demo MariaDB's port.
fn config_text(
    listen: &str,
    http: &str,
    pg_port: u16,
    mysql: Option<&(String, u16)>,
    store: Option<&str>,
) -> String {
    let store = store
        .unwrap_or("sqlite://weir.db")
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let mysql_listen = mysql
        .map(|(addr, _)| format!("mysql_listen = \"{addr}\"\n"))
        .unwrap_or_default();
    let mut s = format!(
        r#"# Written by `weir demo`; removed when it stops.
[gateway]
postgres_listen = "{listen}"
{mysql_listen}http_listen = "{http}"
store = "{store}"

[policy]
files = ["policy/*.cedar"]
# dana (dba) approves, and in the console also reads the trail.
auditor_group = "dba"

[approvals]
approvers = ["dba"]
"#
    );
    for (name, kind, groups, token) in IDENTITIES {
        let _ = write!(
            s,
            r#"
[[identity.static]]
name = "{name}"
kind = "{kind}"
groups = ["{groups}"]
token = "{token}"
"#
        );
    }
    for (name, db, env) in [
        ("shop", "shop", "production"),
        ("shop_dev", "shop_dev", "development"),
    ] {
        let _ = write!(
            s,
            r#"
[[target]]
name = "{name}"
engine = "postgres"
environment = "{env}"
upstream = "127.0.0.1:{pg_port}"
database = "{db}"
user = "postgres"
password_file = "upstream-password"
[target.tables."public.customers"]
sensitivity = "pii"
"#
        );
    }
    if let Some((_, port)) = mysql {
        let _ = write!(
            s,
            r#"
[[target]]
name = "shop_mysql"
engine = "mysql"
environment = "production"
upstream = "127.0.0.1:{port}"
database = "shop"
user = "{MARIADB_USER}"
password_file = "mariadb-password"
[target.tables."shop.customers"]
sensitivity = "pii"
"#
        );
    }
    s
}

/// `mysql`: the MySQL listener's address and the demo MariaDB's port, when it runs.
fn banner(
    addr: &str,
    http: &str,
    cluster: &Cluster,
    mysql: Option<(String, u16)>,
    config: &std::path::Path,
) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "6432"));
    let weir = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "weir".into());
    let cfg = config.display();
    let conn = |user: &str, token: &str| {
        format!("host={host} port={port} dbname=shop user={user} password={token}")
    };
    let alice = conn("alice", "alice-demo-token");
    let mut s = String::new();
    let _ = writeln!(s, "\nWeir demo is running.");
    let _ = writeln!(
        s,
        "  throwaway PostgreSQL  127.0.0.1:{} (its password stays inside Weir)",
        cluster.port
    );
    let _ = writeln!(s, "  gateway               {addr}  (config: {cfg})");
    if let Some((listen, port)) = &mysql {
        let _ = writeln!(
            s,
            "  throwaway MariaDB     127.0.0.1:{port} (behind the MySQL listener {listen})"
        );
    }
    let _ = writeln!(
        s,
        "  targets               shop (production), shop_dev (development){}",
        if mysql.is_some() {
            ", shop_mysql (MariaDB, production)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  audit trail           {}  (hash chain, signed checkpoints)",
        config.with_file_name("weir.db").display()
    );
    let _ = writeln!(s, "\nConnect as one of the demo identities:");
    for (name, kind, groups, token) in IDENTITIES {
        let _ = writeln!(
            s,
            "  psql \"{}\"   # {kind}, group {groups}",
            conn(name, token)
        );
    }
    let _ = writeln!(
        s,
        "  psql \"{}\"   # refused: 28P01",
        conn("alice", "wrong")
    );
    let _ = writeln!(s, "\nThings to try, top to bottom (copy and paste):");
    let _ = writeln!(
        s,
        "  # 1. A masked read: PII leaves Weir masked, the rest as it is."
    );
    let _ = writeln!(
        s,
        "  psql \"{alice}\" -c \"SELECT full_name, email, card_number, ssn FROM customers LIMIT 3\""
    );
    let _ = writeln!(
        s,
        "  # 2. A denial: no DELETE without a WHERE in production."
    );
    let _ = writeln!(s, "  psql \"{alice}\" -c \"DELETE FROM orders\"");
    let _ = writeln!(
        s,
        "  # 3. An agent's write, refused by the demo's own Cedar rule."
    );
    let _ = writeln!(
        s,
        "  psql \"{}\" -c \"UPDATE orders SET status = 'refunded' WHERE id = 1\"",
        conn("claude", "claude-demo-token")
    );
    let _ = writeln!(
        s,
        "  # 4. DDL in production waits for an approver (alice's psql waits up to 120 s)…"
    );
    let _ = writeln!(
        s,
        "  psql \"{alice}\" -c \"CREATE INDEX ON orders (status)\""
    );
    let _ = writeln!(
        s,
        "  #    …and in a second terminal dana (group dba) approves it; alice's statement runs."
    );
    let _ = writeln!(s, "  {weir} approvals --config {cfg}");
    let _ = writeln!(
        s,
        "  {weir} approve $({weir} approvals --config {cfg} | awk 'NR==1{{print $1}}') --config {cfg} --as dana"
    );
    let _ = writeln!(
        s,
        "  # 5. The tamper-evident trail: every statement above is in it, the chain verifies."
    );
    let _ = writeln!(s, "  {weir} audit verify --config {cfg}");
    let _ = writeln!(
        s,
        "  # 6. Replay alice's last session, decision by decision."
    );
    let _ = writeln!(
        s,
        "  {weir} audit replay --config {cfg} --last --identity alice"
    );
    let _ = writeln!(
        s,
        "\nMore: DROP TABLE orders; (denied in production, fine on dbname=shop_dev),"
    );
    let _ = writeln!(
        s,
        "  SELECT pg_read_file('/etc/passwd'); (denied but to admins),"
    );
    let _ = writeln!(s, "  {weir} audit export --config {cfg} --format csv");
    if let Some((listen, _)) = &mysql {
        let (mhost, mport) = listen.rsplit_once(':').unwrap_or((listen, "3307"));
        let _ = writeln!(
            s,
            "\nThe same through the MySQL listener, with the mariadb client:"
        );
        let my = |sql: &str| {
            format!(
                "  mariadb -h {mhost} -P {mport} -u alice -palice-demo-token shop_mysql -e \"{sql}\""
            )
        };
        let _ = writeln!(s, "  # A masked read, then a denial.");
        let _ = writeln!(
            s,
            "{}",
            my("SELECT full_name, email, card_number, ssn FROM customers LIMIT 3")
        );
        let _ = writeln!(s, "{}", my("DELETE FROM orders"));
    }
    let _ = writeln!(
        s,
        "\nAgents over MCP (tools list_targets, describe_target, query, request_access), as claude:"
    );
    let _ = writeln!(
        s,
        "  stdio: command {weir}, args [\"mcp\", \"--config\", \"{cfg}\"], env WEIR_TOKEN=claude-demo-token"
    );
    let _ = writeln!(
        s,
        "  HTTP:  http://{http}/mcp with the header Authorization: Bearer claude-demo-token"
    );
    let _ = writeln!(
        s,
        "\nThe web console: http://{http}/ (sign in with dana-demo-token: approvals, live sessions, the audit trail, the policy simulator, grants)"
    );
    let _ = writeln!(s, "Ctrl-C stops the demo and removes everything it made.");
    s
}
