//! `weir token create | list | revoke`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use weir_audit::Event;
use weir_config::Config;
use weir_store::NewToken;

/// A fresh token: `weir_` and 32 random bytes, URL-safe base64.
pub fn generate() -> anyhow::Result<String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(format!(
        "weir_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ))
}

/// Records an administrative action in the audit trail *before* it is carried out: if it
/// cannot be recorded, it does not happen.
fn record_admin(config: &Config, action: &str, subject: &str) -> anyhow::Result<()> {
    let e = Event::Admin {
        actor: std::env::var("USER").unwrap_or_else(|_| "cli".into()),
        action: action.into(),
        subject: subject.into(),
    };
    crate::audit_cmd::record(config, e)
}

/// Who a new token is for, as the command line gave it.
pub struct NewIdentity<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub groups: &'a [String],
    /// `KEY=VALUE` pairs.
    pub attrs: &'a [String],
    /// The person an agent acts for.
    pub on_behalf_of: Option<&'a str>,
}

pub fn create(path: &Path, who: NewIdentity<'_>, ttl: Option<&str>) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let name = who.name;
    let kind = weir_policy::IdentityKind::parse(who.kind)
        .with_context(|| format!("--kind {:?}: must be human, service or agent", who.kind))?;
    if name.is_empty() {
        bail!("--name must not be empty");
    }
    if config.identity.statics.iter().any(|s| s.name == name) {
        bail!(
            "{name:?} is a static identity in {}; pick another name",
            path.display()
        );
    }
    // A name is one principal to policy: a service or agent must not share a person's name,
    // or rules written for that person would apply to it. People from the IdP are named by
    // an email address (the default username claim), so those names stay theirs.
    if kind != weir_policy::IdentityKind::Human && name.contains('@') {
        bail!(
            "{name:?} is shaped like a person's address from the IdP; a {} token needs a name of its own",
            kind.as_str()
        );
    }
    if let Some(person) = who.on_behalf_of {
        if kind != weir_policy::IdentityKind::Agent {
            bail!("--on-behalf-of is for agent tokens (--kind agent): an agent acts for a person");
        }
        if person == name {
            bail!("--on-behalf-of {person:?}: an agent cannot act for itself");
        }
    }
    let mut attributes = BTreeMap::new();
    for pair in who.attrs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--attr {pair:?}: expected KEY=VALUE"))?;
        if key.is_empty() {
            bail!("--attr {pair:?}: the key is empty");
        }
        attributes.insert(key.to_owned(), value.to_owned());
    }
    let ttl: Option<Duration> = ttl
        .map(|t| {
            humantime::parse_duration(t)
                .with_context(|| format!("--ttl {t:?}: expected e.g. 24h or 30d"))
        })
        .transpose()?;
    let store = crate::serve::open_store(&config)?;
    // Revoked and expired tokens count too: the rules written for that name stay its kind's.
    if let Some(other) = store
        .list_tokens()?
        .into_iter()
        .find(|t| t.name == name && t.kind != kind)
    {
        bail!(
            "{name:?} is already the name of a {} (token {}); one name is one kind of identity",
            other.kind.as_str(),
            other.id
        );
    }
    if let Some(person) = who.on_behalf_of {
        // The person must be someone Weir can check at every login of the agent: a static
        // person or one holding an active Weir token now.
        let auth = weir_proxy::auth::Authenticator::new(&config, std::sync::Arc::clone(&store));
        match auth.person(person) {
            Ok(_) => {}
            Err(e) => bail!("--on-behalf-of {person:?}: {e}"),
        }
    }
    record_admin(&config, "token.create", name)?;
    let token = generate()?;
    let groups: Vec<String> = who
        .groups
        .iter()
        .filter(|g| !g.is_empty())
        .cloned()
        .collect();
    let rec = store.create_token(NewToken {
        name,
        kind,
        groups: &groups,
        attributes: &attributes,
        ttl,
        hash: weir_proxy::auth::hash_token(token.as_bytes()),
        on_behalf_of: who.on_behalf_of,
    })?;
    println!(
        "created token {} for {} ({}, groups: {}{}){}",
        rec.id,
        rec.name,
        match &rec.on_behalf_of {
            Some(p) => format!("{} on behalf of {p}", rec.kind.as_str()),
            None => rec.kind.as_str().to_owned(),
        },
        if groups.is_empty() {
            "-".into()
        } else {
            groups.join(",")
        },
        if attributes.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(", attributes: {}", pairs.join(","))
        },
        match rec.expires_at {
            Some(e) => format!(
                ", expires at {}",
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(e))
            ),
            None => String::new(),
        }
    );
    println!("{token}");
    Ok(())
}

pub fn list(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let store = crate::serve::open_store(&config)?;
    let now = weir_store::now_secs();
    println!(
        "{:<6} {:<24} {:<8} {:<24} {:<8} {:<21} {:<21} attributes",
        "id", "name", "kind", "groups", "status", "last used", "expires"
    );
    for t in store.list_tokens()? {
        let status = if t.revoked_at.is_some() {
            "revoked"
        } else if !t.is_active(now) {
            "expired"
        } else {
            "active"
        };
        let expires = t
            .expires_at
            .map(|e| {
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(e))
                    .to_string()
            })
            .unwrap_or_else(|| "never".into());
        let last_used = t
            .last_used_at
            .map(|u| {
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(u))
                    .to_string()
            })
            .unwrap_or_else(|| "never".into());
        let mut attributes: Vec<String> = t
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Some(p) = &t.on_behalf_of {
            attributes.insert(0, format!("on-behalf-of={p}"));
        }
        println!(
            "{:<6} {:<24} {:<8} {:<24} {:<8} {:<21} {:<21} {}",
            t.id,
            t.name,
            t.kind.as_str(),
            if t.groups.is_empty() {
                "-".into()
            } else {
                t.groups.join(",")
            },
            status,
            last_used,
            expires,
            if attributes.is_empty() {
                "-".into()
            } else {
                attributes.join(",")
            }
        );
    }
    Ok(())
}

pub fn revoke(path: &Path, name: &str) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let store = crate::serve::open_store(&config)?;
    record_admin(&config, "token.revoke", name)?;
    let n = store.revoke_tokens(name)?;
    if n == 0 {
        bail!("{name:?} has no active token");
    }
    println!("revoked {n} token(s) of {name}");
    Ok(())
}
