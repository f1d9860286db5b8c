//! Client authentication: the password a client sends is a Weir token (or, later, an OIDC ID
//! token) that must belong to the identity named as the user.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use weir_config::Config;
use weir_policy::{Identity, IdentityKind};
use weir_store::Store;

/// Why a client was refused. Every variant reaches the client as the same SQLSTATE 28P01
/// with the same text, so a caller cannot probe which names exist.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token was given")]
    Missing,
    #[error("unknown token")]
    Unknown,
    #[error("token belongs to another identity")]
    WrongIdentity,
    #[error("token was revoked")]
    Revoked,
    #[error("token expired")]
    Expired,
    #[error("store unavailable: {0}")]
    Store(String),
    #[error("ID token refused: {0}")]
    Oidc(#[from] crate::oidc::OidcError),
    /// A person from the IdP whose name is a service's or an agent's: one name is one
    /// principal to policy, so neither may pass for the other.
    #[error("the name belongs to an identity of kind {0}, not to a person")]
    NameOfAnotherKind(&'static str),
    /// An agent's person can no longer be vouched for.
    #[error("the person this agent acts for cannot act: {0}")]
    PersonGone(String),
}

impl AuthError {
    /// A fixed name for the kind of failure (a metrics label: never the token or name).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Unknown => "unknown_token",
            AuthError::WrongIdentity => "wrong_identity",
            AuthError::Revoked => "revoked",
            AuthError::Expired => "expired",
            AuthError::Store(_) => "store_unavailable",
            AuthError::Oidc(_) => "id_token_refused",
            AuthError::NameOfAnotherKind(_) => "name_of_another_kind",
            AuthError::PersonGone(_) => "person_gone",
        }
    }
}

struct StaticEntry {
    hash: [u8; 32],
    identity: Identity,
}

pub struct Authenticator {
    statics: HashMap<String, StaticEntry>,
    store: Arc<dyn Store>,
    /// ID tokens from `[identity] issuer`, when configured.
    oidc: Option<crate::oidc::Oidc>,
    /// `[identity] delegation_window`, on this clock.
    delegation_window: std::time::Duration,
    clock: weir_store::Clock,
    /// One-use secrets for sessions this process opens for itself as an identity it has
    /// already established (`weir undo --apply --as NAME`): by hash, never stored, never sent
    /// over a network (only an in-process pipe carries them).
    vouched: std::sync::Mutex<HashMap<[u8; 32], Identity>>,
}

pub fn hash_token(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Authenticator {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> Authenticator {
        let statics = config
            .identity
            .statics
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    StaticEntry {
                        hash: hash_token(s.token.as_bytes()),
                        identity: Identity {
                            name: s.name.clone(),
                            kind: s.kind,
                            groups: s.groups.clone(),
                            attributes: s.attributes.clone(),
                            source: "static",
                            on_behalf_of: None,
                        },
                    },
                )
            })
            .collect();
        Authenticator {
            statics,
            store,
            oidc: crate::oidc::Oidc::new(&config.identity, weir_store::Clock::from_env()),
            delegation_window: config.identity.delegation_window,
            clock: weir_store::Clock::from_env(),
            vouched: Default::default(),
        }
    }

    /// Verifies `token` for `user`. Runs the store lookup on a blocking thread. Returns the
    /// identity, and the id of the Weir token it used (sessions end when it is revoked).
    pub async fn verify(
        &self,
        user: &str,
        token: &[u8],
    ) -> Result<(Identity, Option<i64>), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if let Some(oidc) = &self.oidc {
            if crate::oidc::Oidc::looks_like_jwt(token) {
                let token = std::str::from_utf8(token).map_err(|_| AuthError::Unknown)?;
                let identity = oidc.verify(user, token).await?;
                self.check_name_is_a_persons(&identity.name).await?;
                self.seen_person(&identity).await;
                return Ok((identity, None));
            }
        }
        let hash = hash_token(token);
        let vouched = self
            .vouched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&hash);
        if let Some(identity) = vouched {
            if identity.name != user {
                return Err(AuthError::WrongIdentity);
            }
            return Ok((identity, None));
        }
        if let Some(entry) = self.statics.get(user) {
            if constant_time_eq(&entry.hash, &hash) {
                return Ok((entry.identity.clone(), None));
            }
        }
        let store = Arc::clone(&self.store);
        let record = tokio::task::spawn_blocking(move || store.find_token(&hash))
            .await
            .map_err(|e| AuthError::Store(e.to_string()))?
            .map_err(|e| AuthError::Store(e.to_string()))?
            .ok_or(AuthError::Unknown)?;
        let token_id = record.id;
        if record.name != user {
            return Err(AuthError::WrongIdentity);
        }
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if !record.is_active(weir_store::now_secs()) {
            return Err(AuthError::Expired);
        }
        let identity = token_identity(record);
        self.check_person(&identity)?;
        Ok((identity, Some(token_id)))
    }

    /// Refuses a person's login under a name that a service or agent holds or held (a static
    /// identity, or a Weir token, even revoked), so rules written for one never match the
    /// other.
    async fn check_name_is_a_persons(&self, name: &str) -> Result<(), AuthError> {
        if let Some(entry) = self.statics.get(name) {
            if entry.identity.kind != IdentityKind::Human {
                return Err(AuthError::NameOfAnotherKind(entry.identity.kind.as_str()));
            }
        }
        let store = Arc::clone(&self.store);
        let tokens = tokio::task::spawn_blocking(move || store.list_tokens())
            .await
            .map_err(|e| AuthError::Store(e.to_string()))?
            .map_err(|e| AuthError::Store(e.to_string()))?;
        // Revoked and expired tokens count too: rules written for that service stay its.
        match tokens
            .iter()
            .find(|t| t.name == name && t.kind != IdentityKind::Human)
        {
            Some(t) => Err(AuthError::NameOfAnotherKind(t.kind.as_str())),
            None => Ok(()),
        }
    }

    /// A one-use secret that logs `identity` in once, for a session this process opens for
    /// itself over an in-process pipe (its caller established who `identity` is).
    pub fn vouch(&self, identity: Identity) -> String {
        let mut bytes = [0u8; 32];
        let secret = match getrandom::fill(&mut bytes) {
            Ok(()) => format!("weir-vouched-{}", hex::encode(bytes)),
            // No randomness: a secret nobody can present.
            Err(_) => return String::new(),
        };
        let mut vouched = self
            .vouched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Each is used at once; ones whose session never logged in are not kept forever.
        if vouched.len() >= 1024 {
            vouched.clear();
        }
        vouched.insert(hash_token(secret.as_bytes()), identity);
        secret
    }

    /// The identity a bearer token (HTTP API) belongs to, whoever it names.
    pub async fn verify_bearer(&self, token: &[u8]) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let hash = hash_token(token);
        // Every static entry is compared, so the time taken does not tell which matched.
        let mut found = None;
        for entry in self.statics.values() {
            if constant_time_eq(&entry.hash, &hash) {
                found = Some(entry.identity.clone());
            }
        }
        if let Some(identity) = found {
            return Ok(identity);
        }
        let store = Arc::clone(&self.store);
        let record = tokio::task::spawn_blocking(move || store.find_token(&hash))
            .await
            .map_err(|e| AuthError::Store(e.to_string()))?
            .map_err(|e| AuthError::Store(e.to_string()))?
            .ok_or(AuthError::Unknown)?;
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if !record.is_active(weir_store::now_secs()) {
            return Err(AuthError::Expired);
        }
        let identity = token_identity(record);
        self.check_person(&identity)?;
        Ok(identity)
    }

    /// An agent acting for a person logs in only while that person could.
    fn check_person(&self, identity: &Identity) -> Result<(), AuthError> {
        match &identity.on_behalf_of {
            Some(person) => self.person(person).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The identity a bearer token proves: a Weir token or static identity's token, or an ID
    /// token from `[identity] issuer` (verified as for the name its username claim holds).
    pub async fn verify_any(&self, token: &[u8]) -> Result<Identity, AuthError> {
        if let Some(oidc) = &self.oidc {
            if crate::oidc::Oidc::looks_like_jwt(token) {
                let text = std::str::from_utf8(token).map_err(|_| AuthError::Unknown)?;
                let name = oidc.claimed_name(text).ok_or(AuthError::Unknown)?;
                return self
                    .verify(&name, token)
                    .await
                    .map(|(identity, _)| identity);
            }
        }
        self.verify_bearer(token).await
    }

    /// The person an agent acts for, as of now: a static person, the newest active Weir
    /// token of a person by that name, or a person who signed in with an ID token within
    /// `[identity] delegation_window` (the IdP cannot be asked whether someone is still
    /// there between their sign-ins; someone it removed cannot sign in, so their agents stop
    /// within the window). Anyone else (a name nobody holds, a service or an agent, a person
    /// whose tokens are all revoked or expired) stops the agent.
    /// Also returns the id of the person's Weir token, when that is what vouches for them:
    /// the agent's sessions end with it.
    pub fn person(&self, name: &str) -> Result<(Identity, Option<i64>), AuthError> {
        match self.named(name)? {
            Some((p, token)) if p.kind == IdentityKind::Human => return Ok((p, token)),
            Some((p, _)) => {
                return Err(AuthError::PersonGone(format!(
                    "{name} is a {}, not a person",
                    p.kind.as_str()
                )))
            }
            None => {}
        }
        let seen = self
            .store
            .person(name)
            .map_err(|e| AuthError::Store(e.to_string()))?;
        let window = u64::try_from(self.delegation_window.as_millis()).unwrap_or(u64::MAX);
        match seen {
            Some(p) if p.seen_ms.saturating_add(window) > self.clock.now_ms() => Ok((
                Identity {
                    name: p.name,
                    kind: IdentityKind::Human,
                    groups: p.groups,
                    attributes: p.attributes,
                    source: "oidc",
                    on_behalf_of: None,
                },
                None,
            )),
            Some(_) => Err(AuthError::PersonGone(format!(
                "{name} has not signed in with the identity provider within [identity] delegation_window ({}); their agents act again once they do",
                humantime::format_duration(self.delegation_window)
            ))),
            None => Err(AuthError::PersonGone(format!(
                "{name} has no active identity (a static person, an unrevoked, unexpired token, or a sign-in with the identity provider)"
            ))),
        }
    }

    /// Keeps a person who signed in with an ID token on record (for agents acting for
    /// them). A store that cannot take it costs only that: the sign-in stands.
    async fn seen_person(&self, identity: &Identity) {
        let record = weir_store::PersonRecord {
            name: identity.name.clone(),
            groups: identity.groups.clone(),
            attributes: identity.attributes.clone(),
            seen_ms: self.clock.now_ms(),
        };
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.record_person(&record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(cause = %e, "cannot record a person's sign-in"),
            Err(e) => tracing::warn!(cause = %e, "cannot record a person's sign-in"),
        }
    }

    /// The identity called `name` (a static one, else the newest active token's), for an
    /// approver named by a channel that vouches for names (the CLI's `--as`, a signed webhook
    /// callback, a mapped Slack user).
    pub fn identity_named(&self, name: &str) -> Result<Option<Identity>, AuthError> {
        Ok(self.named(name)?.map(|(identity, _)| identity))
    }

    /// [`Authenticator::identity_named`], with the id of the Weir token it came from.
    fn named(&self, name: &str) -> Result<Option<(Identity, Option<i64>)>, AuthError> {
        if let Some(entry) = self.statics.get(name) {
            return Ok(Some((entry.identity.clone(), None)));
        }
        let now = weir_store::now_secs();
        let rec = self
            .store
            .list_tokens()
            .map_err(|e| AuthError::Store(e.to_string()))?
            .into_iter()
            .rev()
            .find(|t| t.name == name && t.is_active(now));
        Ok(rec.map(|rec| {
            let id = rec.id;
            (token_identity(rec), Some(id))
        }))
    }
}

/// The identity a Weir token stands for.
fn token_identity(record: weir_store::TokenRecord) -> Identity {
    Identity {
        name: record.name,
        kind: record.kind,
        groups: record.groups,
        attributes: record.attributes,
        source: "token",
        on_behalf_of: record.on_behalf_of,
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}
