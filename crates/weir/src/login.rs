//! `weir login` and `weir connect TARGET`: a developer's daily flow is two commands.
//!
//! `login` runs the OAuth device-code grant (RFC 8628) against `[identity] issuer` with the
//! public client `[identity] client_id` and caches the tokens in a file only the user can read
//! (0600, in a 0700 directory: `$WEIR_TOKEN_CACHE`, else `$XDG_CONFIG_HOME/weir/token.json`,
//! else `~/.config/weir/token.json`). `connect` takes the cached ID token — refreshed with the
//! refresh token when it is about to expire — and starts psql against the gateway with it as
//! the password (`--print` prints the connection string instead).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::Value;
use weir_config::Config;
use weir_store::Clock;

/// A token within this many seconds of expiry is refreshed before use.
const REFRESH_AHEAD_S: u64 = 60;

/// Where the tokens are cached.
pub fn cache_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WEIR_TOKEN_CACHE") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(base.join("weir").join("token.json"))
}

struct Endpoints {
    device: String,
    token: String,
}

/// For the issuer's documents (redirects followed, https only).
fn http(issuer: &str) -> anyhow::Result<reqwest::Client> {
    weir_proxy::oidc::http_client(Duration::from_secs(15), issuer, true).map_err(anyhow::Error::msg)
}

/// For POSTs that carry a device code or a refresh token: never redirected.
fn http_post(issuer: &str) -> anyhow::Result<reqwest::Client> {
    weir_proxy::oidc::http_client(Duration::from_secs(15), issuer, false)
        .map_err(anyhow::Error::msg)
}

async fn endpoints(client: &reqwest::Client, issuer: &str) -> anyhow::Result<Endpoints> {
    let doc = weir_proxy::oidc::discover(client, issuer).await?;
    let field = |k: &str| {
        let url = doc
            .get(k)
            .and_then(Value::as_str)
            .with_context(|| format!("{issuer}'s discovery document has no {k}"))?;
        // The token is posted there: not over plain http to another machine.
        anyhow::ensure!(
            weir_config::secure_url(url),
            "{issuer}'s discovery document names {k} {url:?}, which is not https"
        );
        Ok(url.to_owned())
    };
    Ok(Endpoints {
        device: field("device_authorization_endpoint")?,
        token: field("token_endpoint")?,
    })
}

async fn post_form(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let body = serde_urlencoded::to_string(form)?;
    let mut resp = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .with_context(|| format!("reaching {url}"))?;
    let bytes = weir_proxy::oidc::read_json_body(&mut resp)
        .await
        .map_err(|e| anyhow::anyhow!("reading {url}'s answer: {e}"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{url} did not answer JSON"))
}

fn settings(config: &Config) -> anyhow::Result<(String, String, String)> {
    let id = &config.identity;
    let issuer = id
        .issuer
        .clone()
        .context("[identity] issuer is not set: there is no identity provider to log in with")?;
    let client_id = id
        .client_id
        .clone()
        .context("[identity] client_id (or audience) is not set")?;
    Ok((issuer, client_id, id.scopes.clone()))
}

/// `weir login`.
pub fn login(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let (issuer, client_id, scopes) = settings(&config)?;
    let rt = crate::serve::runtime()?;
    let tokens = rt.block_on(async {
        let ep = endpoints(&http(&issuer)?, &issuer).await?;
        let client = http_post(&issuer)?;
        let auth = post_form(
            &client,
            &ep.device,
            &[("client_id", &client_id), ("scope", &scopes)],
        )
        .await?;
        if let Some(e) = auth.get("error").and_then(Value::as_str) {
            bail!("the identity provider refused the device login: {e}");
        }
        let device_code = auth
            .get("device_code")
            .and_then(Value::as_str)
            .context("no device_code in the answer")?
            .to_owned();
        let user_code = auth.get("user_code").and_then(Value::as_str).unwrap_or("");
        let uri = auth
            .get("verification_uri_complete")
            .or_else(|| auth.get("verification_uri"))
            .and_then(Value::as_str)
            .unwrap_or("");
        println!("To log in, open {uri} and confirm the code {user_code}");
        println!("user_code={user_code}");
        let _ = std::io::stdout().flush();
        // At least a second between polls, whatever the provider says.
        let mut interval = auth
            .get("interval")
            .and_then(Value::as_u64)
            .unwrap_or(5)
            .max(1);
        let expires = auth
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(600);
        let started = std::time::Instant::now();
        let mut first = true;
        loop {
            if !first {
                tokio::time::sleep(Duration::from_secs(interval)).await;
            }
            first = false;
            if started.elapsed() > Duration::from_secs(expires) {
                bail!("the login code expired before it was confirmed");
            }
            let answer = post_form(
                &client,
                &ep.token,
                &[
                    ("client_id", &client_id),
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", &device_code),
                ],
            )
            .await?;
            match answer.get("error").and_then(Value::as_str) {
                None => return Ok(answer),
                Some("authorization_pending") => {}
                Some("slow_down") => interval += 5,
                Some(e) => bail!("login failed: {e}"),
            }
        }
    })?;
    let cache = cache_path()?;
    save(&cache, &issuer, &client_id, &tokens)?;
    let id_token = tokens
        .get("id_token")
        .and_then(Value::as_str)
        .context("the identity provider returned no ID token (is `openid` among the scopes?)")?;
    let who = claim(id_token, &config.identity.username_claim).unwrap_or_default();
    println!("logged in as {who}; token cached in {}", cache.display());
    Ok(())
}

/// Writes the cache, readable by its owner only.
fn save(cache: &Path, issuer: &str, client_id: &str, tokens: &Value) -> anyhow::Result<()> {
    // A directory Weir makes is its owner's alone; one that exists (say $HOME, where
    // $WEIR_TOKEN_CACHE may point) keeps its mode: the file's own mode protects the tokens.
    if let Some(dir) = cache
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let body = serde_json::json!({
        "issuer": issuer,
        "client_id": client_id,
        "id_token": tokens.get("id_token"),
        "refresh_token": tokens.get("refresh_token"),
    });
    // A fresh name, created exclusively: never an existing file or a planted symlink, and
    // two logins at once do not write the same file.
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    let tmp = cache.with_extension(format!("tmp.{}", hex::encode(nonce)));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(body.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, cache)?;
    Ok(())
}

/// A claim of a JWT, read without verifying it (the gateway verifies; this is for display
/// and for the expiry).
fn claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(match weir_proxy::oidc::path(&v, name)? {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// `weir connect TARGET [--print]`.
pub fn connect(path: &Path, target: &str, print: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    if config.target(target).is_none() {
        bail!("no target named {target:?} in {}", path.display());
    }
    let cache = cache_path()?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(&cache) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {:o}); remove it and run weir login again",
                cache.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    let cached: Value = serde_json::from_slice(&std::fs::read(&cache).with_context(|| {
        format!(
            "no cached login in {} (run weir login first)",
            cache.display()
        )
    })?)?;
    // A login cached for another issuer (another config, another company) is not this
    // config's: its token would only be refused by the gateway, or refreshed at the wrong
    // place.
    let (issuer, client_id, _) = settings(&config)?;
    let cached_issuer = cached.get("issuer").and_then(Value::as_str).unwrap_or("");
    if cached_issuer != issuer {
        bail!(
            "the cached login in {} is from {cached_issuer:?}, not from [identity] issuer {issuer:?}; run weir login",
            cache.display()
        );
    }
    let cached_client = cached
        .get("client_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    if cached_client != client_id {
        bail!(
            "the cached login in {} was made for client {cached_client:?}, not [identity] client_id {client_id:?}; run weir login",
            cache.display()
        );
    }
    let mut id_token = cached
        .get("id_token")
        .and_then(Value::as_str)
        .context("the cached login has no ID token; run weir login")?
        .to_owned();
    let now = Clock::from_env().now_ms() / 1000;
    let exp: u64 = claim(&id_token, "exp")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    if exp <= now + REFRESH_AHEAD_S {
        let refresh = cached
            .get("refresh_token")
            .and_then(Value::as_str)
            .context("the cached login expired and cannot be refreshed; run weir login")?
            .to_owned();
        let tokens = crate::serve::runtime()?.block_on(async {
            let ep = endpoints(&http(&issuer)?, &issuer).await?;
            post_form(
                &http_post(&issuer)?,
                &ep.token,
                &[
                    ("client_id", &client_id),
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh),
                ],
            )
            .await
        })?;
        if let Some(e) = tokens.get("error").and_then(Value::as_str) {
            bail!("refreshing the login failed ({e}); run weir login");
        }
        id_token = tokens
            .get("id_token")
            .and_then(Value::as_str)
            .context("the refresh returned no ID token; run weir login")?
            .to_owned();
        let mut keep = tokens.clone();
        if let (None, Some(obj)) = (tokens.get("refresh_token"), keep.as_object_mut()) {
            // Providers that do not rotate refresh tokens keep the old one valid.
            obj.insert("refresh_token".into(), Value::String(refresh));
        }
        save(&cache, &issuer, &client_id, &keep)?;
    }
    let user = claim(&id_token, &config.identity.username_claim)
        .context("the ID token has no username claim")?;
    let listen = config
        .gateway
        .postgres_listen
        .context("[gateway] postgres_listen is not set")?;
    let endpoint = gateway_endpoint(&config, listen)?;
    // verify-full: the token is a bearer credential, so it goes only to a listener that
    // proves it is this gateway (its certificate chains to the CA and names the host).
    // gssencmode=disable: GSS encryption would take the place of TLS and of that proof.
    let base = format!(
        "{endpoint} port={} dbname={} user={} sslmode=verify-full gssencmode=disable",
        listen.port(),
        conninfo_value(target),
        conninfo_value(&user),
    );
    if print {
        println!("{base} password={id_token}");
        return Ok(());
    }
    // The token goes in the environment, not on psql's command line (visible in ps).
    let status = std::process::Command::new("psql")
        .arg(&base)
        .env("PGPASSWORD", &id_token)
        .status()
        .context("starting psql")?;
    if !status.success() {
        bail!("psql exited with {status}");
    }
    Ok(())
}

/// Where `weir connect` reaches the gateway and what it trusts for the gateway's certificate,
/// as conninfo: `host=…` (and `hostaddr=…`), then `sslrootcert=…`.
///
/// The host is `[gateway] public_host`, else the listen address. A loopback or unspecified
/// listen address is reached as `host=localhost hostaddr=IP`: the certificate is checked
/// against the name `localhost`, which every libpq matches (IP addresses in certificates
/// only from libpq 15 on). The CA is `[gateway] tls_ca`, else the self-signed certificate
/// Weir generated beside the store. Without a certificate to trust there is no connection:
/// a token is never sent to a listener that has not proven it is the gateway.
fn gateway_endpoint(config: &Config, listen: std::net::SocketAddr) -> anyhow::Result<String> {
    // public_host is validated by config (letters, digits, '.', '-', or an IPv6 address), and
    // an IP address prints as such: neither needs quoting.
    let host = match &config.gateway.public_host {
        Some(h) => format!("host={h}"),
        None => match listen.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                "host=localhost hostaddr=127.0.0.1".to_owned()
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                "host=localhost hostaddr=::1".to_owned()
            }
            ip if ip.is_loopback() => format!("host=localhost hostaddr={ip}"),
            ip => format!("host={ip}"),
        },
    };
    let ca = match (&config.gateway.tls_ca, &config.gateway.tls) {
        (Some(ca), _) => ca.clone(),
        (None, None) => weir_proxy::tls::generated_paths(config).0,
        (None, Some(_)) => bail!(
            "weir connect cannot verify the gateway: [gateway] tls_cert is set but tls_ca is not; \
             set tls_ca to the CA certificate(s) that issued it (for a publicly trusted \
             certificate, the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt)"
        ),
    };
    match std::fs::metadata(&ca) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => bail!(
            "weir connect cannot verify the gateway: {} is not a file",
            ca.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "weir connect cannot verify the gateway: {} is not here{}",
            ca.display(),
            if config.gateway.tls_ca.is_some() {
                ""
            } else {
                " (weir serve makes it on first start; on another machine, copy it and set \
                 [gateway] tls_ca)"
            }
        ),
        Err(e) => bail!(
            "weir connect cannot verify the gateway: reading {}: {e}",
            ca.display()
        ),
    }
    let ca = std::path::absolute(&ca).unwrap_or(ca);
    Ok(format!(
        "{host} sslrootcert={}",
        conninfo_value(&ca.to_string_lossy())
    ))
}

/// A libpq connection-string value, quoted (`'…'` with `\'` and `\\` escaped) so a name with
/// a space or a quote stays one value and cannot add settings such as `host=`.
fn conninfo_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}
