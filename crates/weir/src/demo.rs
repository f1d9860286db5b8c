//! `weir demo`: a throwaway PostgreSQL with sample PII, demo identities, and the gateway in
//! front, all removed on Ctrl-C.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use weir_config::Config;
use weir_proxy::audit::LogSink;
use weir_proxy::Gateway;

use crate::cluster::{Cluster, Options};

const SEED: &str = include_str!("demo_seed.sql");

/// Demo identities: (name, kind, groups, token).
pub const IDENTITIES: &[(&str, &str, &str, &str)] = &[
    ("alice", "human", "developers", "alice-demo-token"),
    ("dana", "human", "dba", "dana-demo-token"),
    ("ci-bot", "service", "ci", "ci-bot-demo-token"),
    ("claude", "agent", "agents", "claude-demo-token"),
];

pub fn run(listen: &str) -> anyhow::Result<()> {
    crate::serve::install_crypto();
    eprintln!("weir demo: starting a throwaway PostgreSQL…");
    let cluster = Cluster::start(Options::default())?;
    for db in ["shop", "shop_dev"] {
        cluster.psql("postgres", &format!("CREATE DATABASE {db}"))?;
        let seed = cluster.dir().join("seed.sql");
        std::fs::write(&seed, SEED)?;
        cluster.psql_file(db, &seed)?;
    }

    let listen = match std::net::TcpListener::bind(listen) {
        Ok(l) => l.local_addr()?.to_string(),
        Err(_) => format!("127.0.0.1:{}", crate::cluster::free_port()?),
    };
    let config_path = cluster.dir().join("weir.toml");
    let password_path = cluster.dir().join("upstream-password");
    std::fs::write(&password_path, &cluster.password)?;
    std::fs::write(&config_path, config_text(&listen, cluster.port))?;
    let config = Config::load(&config_path)?;
    let store = crate::serve::open_store(&config)?;
    let policy = crate::serve::load_policy(&config)?;

    let rt = crate::serve::runtime()?;
    rt.block_on(async {
        let stop = crate::serve::shutdown_signal();
        let gateway = Gateway::bind(config, store, policy, Arc::new(LogSink))
            .await
            .context("starting the gateway")?;
        let addr = gateway.local_addr()?;
        println!("{}", banner(&addr.to_string(), &cluster, &config_path));
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = tx.send(true);
        });
        gateway.run(rx).await;
        anyhow::Ok(())
    })?;
    drop(rt);
    eprintln!(
        "weir demo: stopping PostgreSQL and removing {}",
        cluster.dir().display()
    );
    drop(cluster);
    Ok(())
}

fn config_text(listen: &str, pg_port: u16) -> String {
    let mut s = format!(
        r#"# Written by `weir demo`; removed when it stops.
[gateway]
postgres_listen = "{listen}"
store = "sqlite://weir.db"
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
    s
}

fn banner(addr: &str, cluster: &Cluster, config: &std::path::Path) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "6432"));
    let mut s = String::new();
    let _ = writeln!(s, "\nWeir demo is running.");
    let _ = writeln!(
        s,
        "  throwaway PostgreSQL  127.0.0.1:{} (its password stays inside Weir)",
        cluster.port
    );
    let _ = writeln!(
        s,
        "  gateway               {addr}  (config: {})",
        config.display()
    );
    let _ = writeln!(
        s,
        "  targets               shop (production), shop_dev (development)"
    );
    let _ = writeln!(s, "\nConnect as one of the demo identities:");
    for (name, kind, groups, token) in IDENTITIES {
        let _ = writeln!(
            s,
            "  psql \"host={host} port={port} dbname=shop user={name} password={token}\"   # {kind}, group {groups}"
        );
    }
    let _ = writeln!(s, "\nThings to try:");
    let _ = writeln!(
        s,
        "  SELECT full_name, email, card_number FROM customers LIMIT 5;"
    );
    let _ = writeln!(s, "  SELECT status, count(*) FROM orders GROUP BY status;");
    let _ = writeln!(
        s,
        "  DELETE FROM orders;                -- denied in production: no WHERE"
    );
    let _ = writeln!(
        s,
        "  DROP TABLE orders;                 -- denied in production (fine on shop_dev)"
    );
    let _ = writeln!(
        s,
        "  SELECT pg_read_file('/etc/passwd'); -- denied everywhere but to admins"
    );
    let _ = writeln!(s, "  psql \"host={host} port={port} dbname=shop user=alice password=wrong\"   # refused: 28P01");
    let _ = writeln!(
        s,
        "\nEvery statement is logged as an audit event (target weir::audit) on stderr."
    );
    let _ = writeln!(s, "Ctrl-C stops the demo and removes everything it made.");
    s
}
