//! ID tokens from the company's OpenID Provider (`[identity] issuer`, `audience`).
//!
//! A client logs in with user = its identity name and password = an ID token. Weir finds the
//! issuer's keys through discovery (`/.well-known/openid-configuration` → `jwks_uri`),
//! caches them, and verifies each token:
//! - the header's algorithm is an asymmetric one Weir accepts (RS256/384/512, PS256/384/512,
//!   ES256/384, EdDSA) and matches the key's: `none` and HMAC (`HS*`, which would let anyone
//!   holding the *public* key forge tokens) are refused;
//! - the key is the one the header's `kid` names; an unknown `kid` (the IdP rotated its keys)
//!   triggers one refresh of the key set, at most every [`REFRESH_MIN_INTERVAL`];
//! - `iss` is the issuer exactly, `aud` contains the audience, `exp` is in the future and
//!   `nbf` (if present) in the past, on Weir's [`Clock`] with [`LEEWAY_S`] of skew;
//! - the configured username claim equals the user the client named.
//!
//! The groups (a claim or a dotted path such as `realm_access.roles`) and the configured
//! claims become the identity's groups and attributes for policy. Identities from the IdP
//! are human: services and agents use Weir-issued tokens, so an agent cannot present itself
//! as a person.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use weir_config::{secure_url, IdentityConfig};
use weir_policy::{Identity, IdentityKind};
use weir_store::Clock;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_S: u64 = 60;
/// An unknown `kid` refreshes the key set at most this often (a flood of tokens with made-up
/// key ids must not become a flood of requests to the IdP).
pub const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Larger tokens are refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    #[error("not a JWT")]
    Malformed,
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no key {0:?} at the issuer")]
    UnknownKey(String),
    #[error("the key's algorithm does not match the token's")]
    KeyMismatch,
    #[error("bad signature or claims: {0}")]
    Invalid(String),
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("the token's {claim} is not {user:?}")]
    WrongUser { claim: String, user: String },
    #[error("the IdP has not verified the email address (email_verified is not true)")]
    EmailNotVerified,
    #[error("cannot reach the issuer: {0}")]
    Issuer(String),
}

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys without a `kid` (some IdPs publish a single unnamed key).
    unnamed: Vec<(DecodingKey, Algorithm)>,
}

pub struct Oidc {
    issuer: String,
    audience: String,
    /// `[identity] client_id`: the party ID tokens from `weir login` are issued to (`azp`).
    client_id: Option<String>,
    groups_claim: String,
    username_claim: String,
    claims: Vec<String>,
    /// The client for the issuer, or why it could not be built: then every token is refused
    /// (a client without the redirect and proxy rules of [`http_client`] is never used).
    http: Result<reqwest::Client, String>,
    clock: Clock,
    keys: RwLock<Option<Keys>>,
    refresh: tokio::sync::Mutex<()>,
    /// When the key set was last fetched or tried, on Weir's clock (0: never): failed
    /// fetches count too, so an unreachable issuer is not asked once per login.
    last_attempt_ms: std::sync::atomic::AtomicU64,
}

impl Oidc {
    /// `None` when no issuer is configured.
    pub fn new(config: &IdentityConfig, clock: Clock) -> Option<Oidc> {
        let issuer = config.issuer.clone()?;
        let audience = config.audience.clone()?;
        let http = http_client(Duration::from_secs(10), &issuer, true);
        Some(Oidc {
            issuer,
            audience,
            client_id: config.client_id.clone(),
            groups_claim: config.groups_claim.clone(),
            username_claim: config.username_claim.clone(),
            claims: config.claims.clone(),
            http,
            clock,
            keys: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            last_attempt_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether a password looks like a JWT (three base64url parts, a JSON header).
    pub fn looks_like_jwt(token: &[u8]) -> bool {
        token.starts_with(b"eyJ") && token.iter().filter(|&&b| b == b'.').count() == 2
    }

    /// The name an ID token's username claim holds, unverified: what to verify it for
    /// (a bearer token names no user). `None` for what is not a JWT with that claim.
    pub fn claimed_name(&self, token: &str) -> Option<String> {
        use base64::Engine as _;
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: Value = serde_json::from_slice(&bytes).ok()?;
        path(&claims, &self.username_claim)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
    }

    /// Verifies `token` for the client that named itself `user`.
    pub async fn verify(&self, user: &str, token: &str) -> Result<Identity, OidcError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(OidcError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| OidcError::Malformed)?;
        if !accepted(header.alg) {
            return Err(OidcError::Algorithm(format!("{:?}", header.alg)));
        }
        let (key, alg) = self.key(header.kid.as_deref(), header.alg).await?;
        if alg != header.alg {
            return Err(OidcError::KeyMismatch);
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        // Time is checked below on Weir's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| OidcError::Invalid(e.to_string()))?;
        let claims = data.claims;
        // OpenID Connect Core 3.1.3.7: an `azp` names the party the token was issued to, and
        // it must be Weir (`audience` or `client_id`); a token for several audiences must
        // have one. Otherwise a token issued to another application that also lists Weir
        // could be replayed here.
        let several = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
        match claims.get("azp") {
            None if several => {
                return Err(OidcError::Invalid("several audiences and no azp".into()))
            }
            None => {}
            Some(Value::String(azp))
                if *azp == self.audience || Some(azp) == self.client_id.as_ref() => {}
            Some(_) => return Err(OidcError::Invalid("issued to another party (azp)".into())),
        }
        let now = self.clock.now_ms() / 1000;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(OidcError::Expired)?;
        if now > exp.saturating_add(LEEWAY_S) {
            return Err(OidcError::Expired);
        }
        match claims.get("nbf") {
            None => {}
            Some(nbf) => match nbf.as_u64() {
                Some(nbf) if nbf <= now.saturating_add(LEEWAY_S) => {}
                Some(_) => return Err(OidcError::NotYetValid),
                None => return Err(OidcError::Invalid("nbf is not a number".into())),
            },
        }
        let name = path(&claims, &self.username_claim)
            .and_then(Value::as_str)
            .unwrap_or("");
        let matches = if self.username_claim == "email" {
            name.eq_ignore_ascii_case(user)
        } else {
            name == user
        };
        if name.is_empty() || !matches {
            return Err(OidcError::WrongUser {
                claim: self.username_claim.clone(),
                user: user.to_owned(),
            });
        }
        // An address the IdP has not verified may be anyone's (users can often set their own).
        if self.username_claim == "email" {
            let verified = match claims.get("email_verified") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s == "true",
                _ => false,
            };
            if !verified {
                return Err(OidcError::EmailNotVerified);
            }
        }
        let groups = match path(&claims, &self.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        let mut attributes = BTreeMap::new();
        for c in &self.claims {
            match path(&claims, c) {
                Some(Value::String(s)) => {
                    attributes.insert(c.clone(), s.clone());
                }
                Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                    attributes.insert(c.clone(), v.to_string());
                }
                _ => {}
            }
        }
        // Named as the IdP spells it, not as the client typed it: `ALICE@corp.com` and
        // `alice@corp.com` are one principal to policy and the trail.
        Ok(Identity {
            name: name.to_owned(),
            kind: IdentityKind::Human,
            groups,
            attributes,
            source: "oidc",
            on_behalf_of: None,
        })
    }

    /// The key for `kid`, refreshing the set once if it is not known.
    async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(DecodingKey, Algorithm), OidcError> {
        if let Some(found) = self.cached(kid, alg) {
            return Ok(found);
        }
        let _one_at_a_time = self.refresh.lock().await;
        // Someone else may have refreshed while this waited.
        if let Some(found) = self.cached(kid, alg) {
            return Ok(found);
        }
        let now = self.clock.now_ms();
        let last = self
            .last_attempt_ms
            .load(std::sync::atomic::Ordering::Acquire);
        let recent = last != 0
            && now.saturating_sub(last)
                < u64::try_from(REFRESH_MIN_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if !recent {
            self.last_attempt_ms
                .store(now.max(1), std::sync::atomic::Ordering::Release);
            let keys = self.fetch().await?;
            *self
                .keys
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(keys);
        }
        self.cached(kid, alg)
            .ok_or_else(|| OidcError::UnknownKey(kid.unwrap_or("").to_owned()))
    }

    fn cached(&self, kid: Option<&str>, alg: Algorithm) -> Option<(DecodingKey, Algorithm)> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys = keys.as_ref()?;
        match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            // Without a kid, only an unambiguous key will do.
            None => match (keys.by_kid.len(), keys.unnamed.as_slice()) {
                (0, [one]) => Some(one.clone()),
                (1, []) => keys
                    .by_kid
                    .values()
                    .next()
                    .filter(|(_, a)| *a == alg)
                    .cloned(),
                _ => None,
            },
        }
    }

    /// Discovery, then the key set.
    async fn fetch(&self) -> Result<Keys, OidcError> {
        let http = self
            .http
            .as_ref()
            .map_err(|e| OidcError::Issuer(e.clone()))?;
        let doc = discover(http, &self.issuer).await?;
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Issuer(format!("{} has no jwks_uri", self.issuer)))?;
        let set: JwkSet = get_json(http, jwks_uri).await?;
        let mut keys = Keys {
            by_kid: HashMap::new(),
            unnamed: Vec::new(),
        };
        for jwk in &set.keys {
            let Some(alg) = key_algorithm(jwk) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), (key, alg));
                }
                None => keys.unnamed.push((key, alg)),
            }
        }
        tracing::info!(issuer = %self.issuer, keys = set.keys.len(), "fetched the issuer's signing keys");
        Ok(keys)
    }
}

/// Most bytes read from the issuer for one document (discovery, key set): a misbehaving
/// issuer cannot make Weir buffer without bound.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// The issuer's discovery document (`/.well-known/openid-configuration`), which must name
/// `issuer` itself. Shared by the verifier (for `jwks_uri`) and `weir login` (for its
/// endpoints).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Value, OidcError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc: Value = get_json(http, &url).await?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(OidcError::Issuer(format!("{url} names another issuer")));
    }
    Ok(doc)
}

/// The HTTP client for `issuer`. With `follow_redirects` (GETs of public documents), it
/// follows at most 5 redirects, each only to a [`secure_url`], so an https issuer cannot be
/// sent to plain http; without (POSTs carrying a device code or a refresh token), none. A
/// plain-http issuer (only ever on this machine) is reached directly, never through an
/// `HTTP_PROXY`, which would carry the exchange off the machine in clear. An error when the
/// client cannot be built: falling back to a default client would drop those rules.
pub fn http_client(
    timeout: Duration,
    issuer: &str,
    follow_redirects: bool,
) -> Result<reqwest::Client, String> {
    let redirects = if follow_redirects {
        reqwest::redirect::Policy::custom(|attempt| {
            // `previous` holds the original URL and every redirect so far.
            if attempt.previous().len() > 5 {
                attempt.error("too many redirects")
            } else if secure_url(attempt.url().as_str()) {
                attempt.follow()
            } else {
                attempt.error("redirected to a URL that is not https")
            }
        })
    } else {
        reqwest::redirect::Policy::none()
    };
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(redirects);
    if !issuer.starts_with("https://") {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| format!("building the HTTP client for {issuer}: {e}"))
}

/// GETs `url` and parses its JSON body, read up to [`MAX_DOCUMENT`] bytes. `url` must be a
/// [`secure_url`]: the discovery document names where the keys are, and keys fetched over
/// plain http from another machine could be anyone's.
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, OidcError> {
    let failed = |e: &dyn std::fmt::Display| OidcError::Issuer(format!("{url}: {e}"));
    if !secure_url(url) {
        return Err(failed(&"not an https URL"));
    }
    let mut resp = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(&e))?;
    let body = read_json_body(&mut resp).await.map_err(|e| failed(&e))?;
    serde_json::from_slice(&body).map_err(|e| failed(&e))
}

/// An answer's body, read up to [`MAX_DOCUMENT`] bytes: a misbehaving issuer cannot make
/// Weir (or `weir login`) buffer without bound.
pub async fn read_json_body(resp: &mut reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len().saturating_add(chunk.len()) > MAX_DOCUMENT {
            return Err(format!("more than {MAX_DOCUMENT} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The asymmetric algorithms Weir accepts. Never `none`, never HMAC.
fn accepted(alg: Algorithm) -> bool {
    matches!(
        alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    )
}

/// The algorithm a published key is for: its `alg` if it says, else what its type implies.
/// Keys for signing only (`use` other than `sig` are skipped) and of accepted kinds.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(&jwk.common.public_key_use, Some(u) if !matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature))
    {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => format!("{a:?}").parse::<Algorithm>().ok()?,
        None => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            _ => return None,
        },
    };
    accepted(alg).then_some(alg)
}

/// A claim by name or dotted path (`realm_access.roles`); a claim whose own name contains
/// dots is found first.
pub fn path<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.split('.').try_fold(claims, |v, part| v.get(part))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_found_by_name_or_path() {
        let c = serde_json::json!({
            "groups": ["dba"],
            "realm_access": {"roles": ["admin", "dev"]},
            "https://example.com/team": "core"
        });
        assert_eq!(path(&c, "groups").unwrap()[0], "dba");
        assert_eq!(path(&c, "realm_access.roles").unwrap()[1], "dev");
        assert_eq!(path(&c, "https://example.com/team").unwrap(), "core");
        assert!(path(&c, "realm_access.nothing").is_none());
    }

    #[test]
    fn only_asymmetric_algorithms_are_accepted() {
        for a in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert!(!accepted(a));
        }
        for a in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            assert!(accepted(a));
        }
    }

    #[test]
    fn jwt_shape() {
        assert!(Oidc::looks_like_jwt(b"eyJhbGciOi.eyJzdWIi.sig"));
        assert!(!Oidc::looks_like_jwt(b"weir_abcdef"));
        assert!(!Oidc::looks_like_jwt(b"eyJ.only-one-dot"));
    }
}

/// Verification against a local issuer (discovery and JWKS served over HTTP by the test,
/// tokens signed with keys the test made). The real-provider tests are in
/// `crates/weir/tests`.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]
mod issuer_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    struct Key {
        kid: String,
        alg: Algorithm,
        encoding: EncodingKey,
        jwk: Value,
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn key(kid: &str, alg: Algorithm) -> Key {
        let (rc_alg, pem_fn): (&rcgen::SignatureAlgorithm, fn(&[u8]) -> EncodingKey) = match alg {
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
                EncodingKey::from_ec_pem(p).unwrap()
            }),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, |p| {
                EncodingKey::from_ed_pem(p).unwrap()
            }),
            _ => unreachable!(),
        };
        let pair = rcgen::KeyPair::generate_for(rc_alg).unwrap();
        let raw = pair.public_key_raw();
        let jwk = match alg {
            Algorithm::ES256 => json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64(&raw[1..33]), "y": b64(&raw[33..65])
            }),
            _ => json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
                "x": b64(raw)
            }),
        };
        Key {
            kid: kid.into(),
            alg,
            encoding: pem_fn(pair.serialize_pem().as_bytes()),
            jwk,
        }
    }

    struct Issuer {
        url: String,
        keys: Arc<Mutex<Vec<Value>>>,
        fetches: Arc<AtomicUsize>,
    }

    async fn issuer() -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(Vec::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f, u) = (Arc::clone(&keys), Arc::clone(&fetches), url.clone());
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let u = u.clone();
                    async move { axum::Json(json!({"issuer": u, "jwks_uri": format!("{u}/jwks")})) }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let (k, f) = (Arc::clone(&k), Arc::clone(&f));
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        axum::Json(json!({"keys": *k.lock().unwrap()}))
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer { url, keys, fetches }
    }

    fn config(issuer: &str) -> IdentityConfig {
        IdentityConfig {
            issuer: Some(issuer.into()),
            audience: Some("weir".into()),
            groups_claim: "realm_access.roles".into(),
            username_claim: "email".into(),
            claims: vec!["department".into()],
            client_id: None,
            scopes: String::new(),
            delegation_window: std::time::Duration::ZERO,
            statics: Vec::new(),
        }
    }

    fn now() -> u64 {
        Clock::system().now_ms() / 1000
    }

    fn sign(k: &Key, claims: &Value) -> String {
        let mut h = Header::new(k.alg);
        h.kid = Some(k.kid.clone());
        jsonwebtoken::encode(&h, claims, &k.encoding).unwrap()
    }

    fn claims(iss: &str) -> Value {
        json!({
            "iss": iss, "aud": "weir", "sub": "u-123", "email": "Alice@Example.com",
            "email_verified": true,
            "exp": now() + 300, "iat": now(), "nbf": now() - 5,
            "realm_access": {"roles": ["dba", "developers"]}, "department": "payments"
        })
    }

    #[tokio::test]
    async fn tokens_are_verified_against_the_issuers_keys() {
        let iss = issuer().await;
        let es = key("k1", Algorithm::ES256);
        let ed = key("k2", Algorithm::EdDSA);
        *iss.keys.lock().unwrap() = vec![es.jwk.clone(), ed.jwk.clone()];
        let oidc = Oidc::new(&config(&iss.url), Clock::system()).unwrap();
        let user = "alice@example.com";

        // Valid, with either algorithm; groups by path, a claim as attribute.
        for k in [&es, &ed] {
            let id = oidc
                .verify(user, &sign(k, &claims(&iss.url)))
                .await
                .unwrap();
            assert_eq!(id.groups, ["dba", "developers"]);
            assert_eq!(id.attributes["department"], "payments");
            assert_eq!(id.kind, IdentityKind::Human);
            assert_eq!(id.source, "oidc");
            // Named as the IdP spells it, whatever case the client typed.
            assert_eq!(id.name, "Alice@Example.com");
        }
        assert_eq!(iss.fetches.load(Ordering::SeqCst), 1, "keys are cached");

        // An address the IdP has not verified is nobody's.
        for unverified in [json!(false), json!("false"), Value::Null] {
            let mut c = claims(&iss.url);
            match unverified {
                Value::Null => c.as_object_mut().unwrap().remove("email_verified"),
                v => c
                    .as_object_mut()
                    .unwrap()
                    .insert("email_verified".into(), v),
            };
            assert_eq!(
                oidc.verify(user, &sign(&es, &c)).await,
                Err(OidcError::EmailNotVerified)
            );
        }
        // A malformed nbf is refused, not ignored.
        let mut c = claims(&iss.url);
        c["nbf"] = json!("soon");
        assert!(matches!(
            oidc.verify(user, &sign(&es, &c)).await,
            Err(OidcError::Invalid(_))
        ));

        let mut c = claims(&iss.url);
        c["exp"] = json!(now() - 120);
        assert_eq!(
            oidc.verify(user, &sign(&es, &c)).await,
            Err(OidcError::Expired)
        );
        // Inside the skew: still fine.
        c["exp"] = json!(now() - 30);
        assert!(oidc.verify(user, &sign(&es, &c)).await.is_ok());
        let mut c = claims(&iss.url);
        c["nbf"] = json!(now() + 600);
        assert_eq!(
            oidc.verify(user, &sign(&es, &c)).await,
            Err(OidcError::NotYetValid)
        );
        let mut c = claims(&iss.url);
        c["aud"] = json!("someone-else");
        assert!(matches!(
            oidc.verify(user, &sign(&es, &c)).await,
            Err(OidcError::Invalid(_))
        ));
        // Several audiences: only with an azp that is Weir.
        let mut c = claims(&iss.url);
        c["aud"] = json!(["other-app", "weir"]);
        assert_eq!(
            oidc.verify(user, &sign(&es, &c)).await,
            Err(OidcError::Invalid("several audiences and no azp".into()))
        );
        c["azp"] = json!("other-app");
        assert_eq!(
            oidc.verify(user, &sign(&es, &c)).await,
            Err(OidcError::Invalid("issued to another party (azp)".into()))
        );
        c["azp"] = json!("weir");
        assert!(oidc.verify(user, &sign(&es, &c)).await.is_ok());
        let mut c = claims(&iss.url);
        c["azp"] = json!("other-app");
        assert!(matches!(
            oidc.verify(user, &sign(&es, &c)).await,
            Err(OidcError::Invalid(_))
        ));
        let mut c = claims(&iss.url);
        c["iss"] = json!("https://evil.example.com");
        assert!(matches!(
            oidc.verify(user, &sign(&es, &c)).await,
            Err(OidcError::Invalid(_))
        ));
        // Someone else's token.
        assert!(matches!(
            oidc.verify("bob@example.com", &sign(&es, &claims(&iss.url)))
                .await,
            Err(OidcError::WrongUser { .. })
        ));
        // Tampered payload: the signature no longer matches.
        let good = sign(&es, &claims(&iss.url));
        let parts: Vec<&str> = good.split('.').collect();
        let mut payload = claims(&iss.url);
        payload["realm_access"]["roles"] = json!(["weir-admins"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(payload.to_string().as_bytes()),
            parts[2]
        );
        assert!(matches!(
            oidc.verify(user, &forged).await,
            Err(OidcError::Invalid(_))
        ));
        // alg=none, and HS256 keyed with the public key (the classic confusion attack).
        let none_header = b64(br#"{"alg":"none","kid":"k1"}"#);
        let none = format!("{none_header}.{}.", parts[1]);
        assert_eq!(oidc.verify(user, &none).await, Err(OidcError::Malformed));
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &claims(&iss.url),
            &EncodingKey::from_secret(es.jwk.to_string().as_bytes()),
        )
        .unwrap();
        assert_eq!(
            oidc.verify(user, &hs).await,
            Err(OidcError::Algorithm("HS256".into()))
        );
    }

    #[tokio::test]
    async fn a_rotated_key_is_fetched_once_and_unknown_kids_are_rate_limited() {
        let iss = issuer().await;
        let old = key("old", Algorithm::ES256);
        *iss.keys.lock().unwrap() = vec![old.jwk.clone()];
        let oidc = Oidc::new(&config(&iss.url), Clock::system()).unwrap();
        let user = "alice@example.com";
        oidc.verify(user, &sign(&old, &claims(&iss.url)))
            .await
            .unwrap();
        assert_eq!(iss.fetches.load(Ordering::SeqCst), 1);
        // The IdP rotates: a token with the new kid makes Weir fetch the set again, but not
        // before the minimum interval since the last fetch.
        let new = key("new", Algorithm::EdDSA);
        *iss.keys.lock().unwrap() = vec![new.jwk.clone()];
        let token = sign(&new, &claims(&iss.url));
        assert_eq!(
            oidc.verify(user, &token).await,
            Err(OidcError::UnknownKey("new".into()))
        );
        assert_eq!(iss.fetches.load(Ordering::SeqCst), 1, "rate-limited");
        // Once the interval has passed (pretend the last fetch was long ago), one fetch.
        oidc.last_attempt_ms.fetch_sub(11_000, Ordering::SeqCst);
        oidc.verify(user, &token).await.unwrap();
        assert_eq!(iss.fetches.load(Ordering::SeqCst), 2);
        // Made-up kids do not cause more fetches.
        for i in 0..20 {
            let mut fake = key(&format!("fake{i}"), Algorithm::ES256);
            fake.kid = format!("fake{i}");
            let _ = oidc.verify(user, &sign(&fake, &claims(&iss.url))).await;
        }
        assert_eq!(iss.fetches.load(Ordering::SeqCst), 2);
        // The old key is gone from the set: its tokens are refused.
        assert!(oidc
            .verify(user, &sign(&old, &claims(&iss.url)))
            .await
            .is_err());
    }
}
