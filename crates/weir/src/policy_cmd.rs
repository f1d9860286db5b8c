//! `weir policy check` (simulate a decision) and `weir policy test` (policy unit tests).

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use weir_analyze::Analyzer;
use weir_config::Config;
use weir_policy::{Identity, IdentityKind, Policy, TargetInfo};

pub use weir_proxy::simulate::verdict_line;

/// The identity named `name`: a static one from config, else the newest active token's.
pub(crate) fn identity(config: &Config, name: &str) -> anyhow::Result<Identity> {
    if let Some(s) = config.identity.statics.iter().find(|s| s.name == name) {
        return Ok(Identity {
            name: s.name.clone(),
            kind: s.kind,
            groups: s.groups.clone(),
            attributes: s.attributes.clone(),
            source: "static",
            on_behalf_of: None,
        });
    }
    let store = crate::serve::open_store(config)?;
    let now = weir_store::now_secs();
    let rec = store
        .list_tokens()?
        .into_iter()
        .rev()
        .find(|t| t.name == name && t.is_active(now))
        .with_context(|| {
            format!(
                "no identity named {name:?}: not a static identity in {} and no active token",
                config.path.display()
            )
        })?;
    Ok(Identity {
        name: rec.name,
        kind: rec.kind,
        groups: rec.groups,
        attributes: Default::default(),
        source: "token",
        on_behalf_of: rec.on_behalf_of,
    })
}

fn target_info(config: &Config, name: &str) -> anyhow::Result<TargetInfo> {
    Ok(config
        .target(name)
        .with_context(|| format!("no target named {name:?} in {}", config.path.display()))?
        .policy_info())
}

/// A MySQL target's database (its statements are read by the MySQL analyzer), if it is one.
fn mysql_database(config: &Config, name: &str) -> Option<String> {
    config
        .target(name)
        .filter(|t| t.engine == weir_config::Engine::Mysql)
        .map(|t| t.database.clone())
}

/// The verdict lines for `sql`, one per statement ([`weir_proxy::simulate::simulate`]).
fn decide(
    policy: &Policy,
    analyzer: &Analyzer,
    who: &Identity,
    person: Option<&Identity>,
    target: &TargetInfo,
    mysql: Option<&str>,
    sql: &str,
) -> anyhow::Result<Vec<String>> {
    Ok(
        weir_proxy::simulate::simulate(policy, analyzer, who, person, target, mysql, sql)?
            .iter()
            .map(|s| verdict_line(&s.verdict))
            .collect(),
    )
}

pub fn check(path: &Path, who: &str, target: &str, sql: &str) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let policy = crate::serve::load_policy(&config)?;
    let who = identity(&config, who)?;
    let person = who
        .on_behalf_of
        .as_deref()
        .map(|p| identity(&config, p))
        .transpose()?;
    let lines = decide(
        &policy,
        &Analyzer::new(),
        &who,
        person.as_ref(),
        &target_info(&config, target)?,
        mysql_database(&config, target).as_deref(),
        sql,
    )?;
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// A policy unit-test file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(rename = "case", default)]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// A known identity (static or token), or an inline one with `kind` and `groups`.
    identity: String,
    kind: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    /// A configured target, or an inline one with `environment`.
    target: Option<String>,
    environment: Option<String>,
    sql: String,
    /// `allow`, `deny`, `deny <rule>`, `approve [<rule>]`, `bound [<n> [<rule>]]`; one per
    /// statement, separated by `;` for multi-statement SQL.
    expect: String,
}

pub fn test(file: &Path, config: Option<&Path>) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let tests: TestFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
    let config = config.map(Config::load).transpose()?;
    let policy = match &config {
        Some(c) => crate::serve::load_policy(c)?,
        None => Policy::load(true, "weir-admins", &[], &[])?,
    };
    let analyzer = Analyzer::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for case in &tests.cases {
        let result = (|| -> anyhow::Result<Vec<String>> {
            let who = match (&case.kind, &config) {
                (Some(kind), _) => Identity {
                    name: case.identity.clone(),
                    kind: IdentityKind::parse(kind).with_context(|| format!("kind {kind:?}"))?,
                    groups: case.groups.clone(),
                    attributes: Default::default(),
                    source: "test",
                    on_behalf_of: None,
                },
                (None, Some(c)) => identity(c, &case.identity)?,
                (None, None) => bail!(
                    "identity {:?} needs `kind` (no --config given)",
                    case.identity
                ),
            };
            let mut target = match (&case.target, &config) {
                (Some(t), Some(c)) => target_info(c, t)?,
                (t, _) => TargetInfo {
                    name: t.clone().unwrap_or_else(|| "test".into()),
                    ..Default::default()
                },
            };
            if let Some(env) = &case.environment {
                target.environment = env.clone();
            }
            let mysql = match (&case.target, &config) {
                (Some(t), Some(c)) => mysql_database(c, t),
                _ => None,
            };
            decide(
                &policy,
                &analyzer,
                &who,
                None,
                &target,
                mysql.as_deref(),
                &case.sql,
            )
        })();
        let want: Vec<&str> = case.expect.split(';').map(str::trim).collect();
        match result {
            Ok(got)
                if got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| matches(g, w)) =>
            {
                passed += 1;
                println!("ok {}", case.name);
            }
            Ok(got) => {
                failed += 1;
                println!(
                    "FAIL {}: expected {}, got {}",
                    case.name,
                    case.expect,
                    got.join("; ")
                );
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e:#}", case.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// `deny` matches any denial; `deny weir.x` matches that rule; likewise for approve and bound.
fn matches(got: &str, want: &str) -> bool {
    got == want || got.starts_with(&format!("{want} "))
}
