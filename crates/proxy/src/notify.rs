//! Telling approvers: a new approval request goes to the generic webhook (signed JSON with a
//! callback) and to Slack (a message with Approve/Deny buttons), as configured. Delivery is
//! best effort and never blocks the waiting statement's bookkeeping: approvers can always
//! decide with the CLI or the HTTP API. Failures are logged.
//!
//! Signatures, both directions:
//! - Weir's webhook: `X-Weir-Timestamp: <unix seconds>` and `X-Weir-Signature: sha256=<hex>`,
//!   HMAC-SHA256 with the webhook secret over `<timestamp>.<body>`; callbacks to Weir are
//!   signed the same way and must be at most five minutes old.
//! - Slack: `X-Slack-Signature: v0=<hex>`, HMAC-SHA256 with the app's signing secret over
//!   `v0:<X-Slack-Request-Timestamp>:<body>`, as Slack documents it.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use weir_config::ApprovalsConfig;
use weir_store::{Approval, Store};

/// How old a signed request may be (either direction): Slack's own recommendation.
pub const MAX_SIGNATURE_AGE_S: u64 = 5 * 60;

/// Slack button ids.
pub const SLACK_APPROVE: &str = "weir_approve";
pub const SLACK_DENY: &str = "weir_deny";

fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this cannot happen.
        return String::new();
    };
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time comparison of two signatures as sent.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `sha256=<hex>` for Weir's webhook scheme.
pub fn weir_signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    format!("sha256={}", hmac_hex(secret, &[ts.as_bytes(), b".", body]))
}

/// `v0=<hex>` as Slack computes it.
pub fn slack_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hmac_hex(secret, &[b"v0:", timestamp.as_bytes(), b":", body])
    )
}

/// Why a signed request was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature or timestamp header is missing")]
    Missing,
    #[error("the timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("the request is too old or from the future (more than five minutes)")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

fn fresh(timestamp: &str, now_s: u64) -> Result<u64, SignatureError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if ts.abs_diff(now_s) > MAX_SIGNATURE_AGE_S {
        return Err(SignatureError::Stale);
    }
    Ok(ts)
}

/// Who signed a request to Weir, and so how its signature is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A callback of Weir's generic webhook.
    Weir,
    /// Slack's interactivity requests.
    Slack,
}

impl Scheme {
    /// The (timestamp, signature) headers.
    pub fn headers(self) -> (&'static str, &'static str) {
        match self {
            Scheme::Weir => ("x-weir-timestamp", "x-weir-signature"),
            Scheme::Slack => ("x-slack-request-timestamp", "x-slack-signature"),
        }
    }
}

/// Checks a signed request: both headers present, the timestamp fresh, the signature the
/// scheme's over this body.
pub fn verify(
    scheme: Scheme,
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_s: u64,
) -> Result<(), SignatureError> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let seconds = fresh(ts, now_s)?;
    let expected = match scheme {
        Scheme::Weir => weir_signature(secret, seconds, body),
        Scheme::Slack => slack_signature(secret, ts.trim(), body),
    };
    if same(&expected, sig.trim()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// An approval request as the HTTP API and the webhook show it.
pub fn approval_json(a: &Approval) -> Value {
    json!({
        "id": a.id,
        "kind": a.kind.as_str(),
        "status": a.status.as_str(),
        "identity": a.identity,
        "identity_kind": a.identity_kind,
        "target": a.target,
        "statement": a.statement,
        "facts": serde_json::from_str::<Value>(&a.facts).unwrap_or(Value::Null),
        "rows": a.rows,
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "reason": a.reason,
        "created_ms": a.created_ms,
        "deadline_ms": a.deadline_ms,
        "decided_by": a.decided_by,
        "decided_ms": a.decided_ms,
        "note": a.note,
    })
}

/// The webhook's JSON for a new request: the request, and where to send the decision.
pub fn webhook_payload(a: &Approval, public_url: Option<&str>) -> Value {
    let mut v = approval_json(a);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("type".into(), json!("approval.requested"));
        // POST {"id", "decision": "approve"|"deny", "approver", "reason"} here, signed.
        obj.insert(
            "callback".into(),
            json!(public_url.map(|u| format!("{u}/v1/webhook/decide"))),
        );
    }
    v
}

/// The Slack message for a new request: what waits, why, and two buttons.
/// `chat.update` for the message that announced `a`, now settled: the outcome replaces the
/// buttons.
pub fn slack_update(a: &Approval, channel: &str, ts: &str) -> Value {
    let outcome = slack_escape(&format!(
        "Request `{}` ({} on {}) was *{}*{}{}",
        a.id,
        a.identity,
        a.target,
        a.status.as_str(),
        a.decided_by
            .as_deref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default(),
        a.note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default(),
    ));
    json!({
        "channel": channel,
        "ts": ts,
        "text": outcome,
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": outcome } },
        ],
    })
}

/// Text from requests and people as Slack shows it literally: `&`, `<` and `>` escaped, so a
/// statement or a reason cannot mention `<!channel>` or link anywhere.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn slack_message(a: &Approval, channel: Option<&str>) -> Value {
    let statement: String = slack_escape(&a.statement.chars().take(2500).collect::<String>());
    let text = slack_escape(&format!(
        "{} ({}) waits for approval on *{}*: {}",
        a.identity, a.identity_kind, a.target, a.reason
    ));
    let mut m = json!({
        "text": format!("Weir approval request {}: {} on {}", a.id, a.identity, a.target),
        "blocks": [
            {
                "type": "section",
                "text": { "type": "mrkdwn", "text": text }
            },
            {
                "type": "section",
                "text": { "type": "mrkdwn", "text": format!("```{statement}```") }
            },
            {
                "type": "context",
                "elements": [
                    { "type": "mrkdwn", "text": format!("request `{}` · rule `{}`", a.id, a.rule) }
                ]
            },
            {
                "type": "actions",
                "block_id": format!("weir_{}", a.id),
                "elements": [
                    {
                        "type": "button",
                        "action_id": SLACK_APPROVE,
                        "style": "primary",
                        "text": { "type": "plain_text", "text": "Approve" },
                        "value": a.id
                    },
                    {
                        "type": "button",
                        "action_id": SLACK_DENY,
                        "style": "danger",
                        "text": { "type": "plain_text", "text": "Deny" },
                        "value": a.id
                    }
                ]
            }
        ]
    });
    if let (Some(channel), Some(obj)) = (channel, m.as_object_mut()) {
        obj.insert("channel".into(), Value::String(channel.to_owned()));
    }
    m
}

/// What a Slack interactivity request asks: a button press on a Weir message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackAction {
    pub approve: bool,
    pub request: String,
    pub user_id: String,
    pub user_name: String,
    pub response_url: Option<String>,
}

/// Reads Slack's `application/x-www-form-urlencoded` body (`payload=<JSON>`) of a
/// `block_actions` request. `None` for anything else.
pub fn parse_slack_action(body: &[u8]) -> Option<SlackAction> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    let payload = form.into_iter().find(|(k, _)| k == "payload")?.1;
    let v: Value = serde_json::from_str(&payload).ok()?;
    if v.get("type")?.as_str()? != "block_actions" {
        return None;
    }
    let action = v.get("actions")?.as_array()?.first()?;
    let approve = match action.get("action_id")?.as_str()? {
        SLACK_APPROVE => true,
        SLACK_DENY => false,
        _ => return None,
    };
    let user = v.get("user")?;
    Some(SlackAction {
        approve,
        request: action.get("value")?.as_str()?.to_owned(),
        user_id: user.get("id")?.as_str()?.to_owned(),
        user_name: user
            .get("username")
            .or_else(|| user.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        response_url: v
            .get("response_url")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Sends approvers the news.
pub struct Notifier {
    http: reqwest::Client,
    config: ApprovalsConfig,
    public_url: Option<String>,
}

impl Notifier {
    pub fn new(config: &weir_config::Config) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Notifier {
            http,
            config: config.approvals.clone(),
            public_url: config.gateway.public_url.clone(),
        }
    }

    /// Whether any channel is configured (so sessions skip the task otherwise).
    pub fn enabled(&self) -> bool {
        self.config.webhook.is_some()
            || self.config.slack_webhook.is_some()
            || (self.config.slack_bot_token.is_some() && self.config.slack_channel.is_some())
    }

    /// Announces a new request on every configured channel. The Slack message posted with
    /// the bot token is remembered in `store`, so whoever settles the request can update it.
    pub async fn announce(&self, a: Approval, store: Arc<dyn Store>) {
        if let Some(url) = &self.config.webhook {
            if let Err(e) = self.webhook(url, &a).await {
                tracing::warn!(approval = %a.id, cause = %e, "approval webhook failed");
            }
        }
        match self.slack(&a).await {
            Err(e) => {
                tracing::warn!(approval = %a.id, cause = %e, "approval message to Slack failed")
            }
            Ok(Some((channel, ts))) => {
                let id = a.id.clone();
                let keeper = Arc::clone(&store);
                let kept = tokio::task::spawn_blocking(move || {
                    keeper.set_approval_message(&id, &channel, &ts)
                })
                .await;
                if !matches!(kept, Ok(Ok(()))) {
                    tracing::warn!(approval = %a.id, "cannot remember the Slack message; it will not show the outcome");
                    return;
                }
                // Settled while the message was being posted: whoever settled it found no
                // message to update, so it is updated here (the message is taken once, so
                // it is updated once either way).
                let id = a.id.clone();
                let reader = Arc::clone(&store);
                if let Ok(Ok(Some(now))) =
                    tokio::task::spawn_blocking(move || reader.approval(&id)).await
                {
                    if now.status != weir_store::ApprovalStatus::Pending {
                        self.resolved(now, store).await;
                    }
                }
            }
            Ok(None) => {}
        }
    }

    /// Shows a settled request's outcome in the Slack message that announced it (and takes
    /// its buttons away), whichever channel settled it. Once per request: the message is
    /// forgotten as it is updated.
    pub async fn resolved(&self, a: Approval, store: Arc<dyn Store>) {
        let Some(token) = &self.config.slack_bot_token else {
            return;
        };
        let id = a.id.clone();
        let message =
            match tokio::task::spawn_blocking(move || store.take_approval_message(&id)).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return,
                _ => {
                    tracing::warn!(approval = %a.id, "cannot read the Slack message to update");
                    return;
                }
            };
        let token = match token.read() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(approval = %a.id, cause = %e, "cannot update the Slack message");
                return;
            }
        };
        let body = slack_update(&a, &message.0, &message.1).to_string();
        let sent = self
            .http
            .post(format!("{}/chat.update", self.config.slack_api))
            .header("content-type", "application/json; charset=utf-8")
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(approval = %a.id, cause = %e, "cannot update the Slack message");
        }
    }

    async fn webhook(&self, url: &str, a: &Approval) -> Result<(), String> {
        let body = webhook_payload(a, self.public_url.as_deref()).to_string();
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json");
        if let Some(secret) = &self.config.webhook_secret {
            let secret = secret.read()?;
            let ts = weir_store::Clock::system().now_ms() / 1000;
            req = req.header("x-weir-timestamp", ts.to_string()).header(
                "x-weir-signature",
                weir_signature(secret.as_bytes(), ts, body.as_bytes()),
            );
        }
        let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        Ok(())
    }

    /// Posts the request to Slack; with the bot token, returns the message's channel and ts.
    async fn slack(&self, a: &Approval) -> Result<Option<(String, String)>, String> {
        let (url, token, channel) = match (
            &self.config.slack_bot_token,
            &self.config.slack_channel,
            &self.config.slack_webhook,
        ) {
            (Some(token), Some(channel), _) => (
                format!("{}/chat.postMessage", self.config.slack_api),
                Some(token.read()?),
                Some(channel.as_str()),
            ),
            (_, _, Some(hook)) => (hook.clone(), None, None),
            _ => return Ok(None),
        };
        let mut req = self
            .http
            .post(&url)
            .header("content-type", "application/json; charset=utf-8");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = req
            .body(slack_message(a, channel).to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("Slack answered {status}: {text}"));
        }
        // The Web API answers 200 with {"ok": false, "error": …} on failure.
        if channel.is_none() {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if v.get("ok") != Some(&Value::Bool(true)) {
            return Err(format!("Slack refused the message: {text}"));
        }
        Ok(
            match (
                v.get("channel").and_then(Value::as_str),
                v.get("ts").and_then(Value::as_str),
            ) {
                (Some(c), Some(ts)) => Some((c.to_owned(), ts.to_owned())),
                _ => None,
            },
        )
    }

    /// Replaces the Slack message a button was pressed on with the outcome.
    pub async fn slack_reply(&self, response_url: &str, text: &str) {
        let body = json!({ "replace_original": true, "text": text }).to_string();
        let sent = self
            .http
            .post(response_url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(cause = %e, "cannot update the Slack message");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Slack's own example ("Verifying requests from Slack"): secret, timestamp, body and
    /// the signature Slack documents for them.
    #[test]
    fn slack_signature_matches_slacks_documented_example() {
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let ts = "1531420618";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let documented = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(slack_signature(secret, ts, body), documented);
        let at = 1_531_420_618 + 60;
        assert_eq!(
            verify(Scheme::Slack, secret, Some(ts), Some(documented), body, at),
            Ok(())
        );
        // Tampered body, wrong secret, replayed late, missing headers.
        let mut tampered = body.to_vec();
        tampered[6] = b'X';
        assert_eq!(
            verify(
                Scheme::Slack,
                secret,
                Some(ts),
                Some(documented),
                &tampered,
                at
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                Scheme::Slack,
                b"other",
                Some(ts),
                Some(documented),
                body,
                at
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                Scheme::Slack,
                secret,
                Some(ts),
                Some(documented),
                body,
                at + 600
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Scheme::Slack, secret, None, Some(documented), body, at),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn weir_callbacks_are_signed_over_timestamp_and_body() {
        let sig = weir_signature(b"s", 1_700_000_000, b"{}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(
            verify(
                Scheme::Weir,
                b"s",
                Some("1700000000"),
                Some(&sig),
                b"{}",
                1_700_000_100
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                Scheme::Weir,
                b"s",
                Some("1700000001"),
                Some(&sig),
                b"{}",
                1_700_000_100
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                Scheme::Weir,
                b"s",
                Some("soon"),
                Some(&sig),
                b"{}",
                1_700_000_100
            ),
            Err(SignatureError::BadTimestamp)
        );
    }

    fn approval() -> Approval {
        Approval {
            id: "r-abc23456".into(),
            kind: weir_store::ApprovalKind::Statement,
            grant_ms: None,
            created_ms: 1,
            deadline_ms: 2,
            identity: "alice".into(),
            identity_kind: "human".into(),
            target: "shop".into(),
            session: 3,
            fingerprint: "00ff".into(),
            statement: "DELETE FROM items WHERE id = $1".into(),
            facts: "[]".into(),
            rows: None,
            rule: "ops.deletes".into(),
            reason: "deletes need a second pair of eyes".into(),
            status: weir_store::ApprovalStatus::Pending,
            decided_by: None,
            decided_ms: None,
            note: None,
        }
    }

    /// Text from the request cannot ping a channel or make a link in Slack.
    #[test]
    fn slack_text_is_escaped() {
        let mut a = approval();
        a.statement = "SELECT '<!channel> <https://evil.example|click>' & 1".into();
        a.reason = "<@U0BOSS>".into();
        let m = slack_message(&a, None).to_string();
        assert!(!m.contains("<!channel>") && !m.contains("<https://") && !m.contains("<@U0BOSS>"));
        assert!(
            m.contains("&lt;!channel&gt;") && m.contains("&amp; 1"),
            "{m}"
        );
        a.status = weir_store::ApprovalStatus::Denied;
        a.decided_by = Some("bob".into());
        a.note = Some("<!here> not now".into());
        let u = slack_update(&a, "C1", "1.2");
        assert_eq!(u["ts"], "1.2");
        assert_eq!(
            u["text"],
            "Request `r-abc23456` (alice on shop) was *denied* by bob: &lt;!here&gt; not now"
        );
    }

    /// The message follows Slack's Block Kit: a section, the statement, context, and an
    /// actions block whose buttons carry the request id and Weir's action ids.
    #[test]
    fn slack_message_has_block_kit_buttons() {
        let m = slack_message(&approval(), Some("C0DBAPPROVE"));
        assert_eq!(m["channel"], "C0DBAPPROVE");
        assert!(m["text"].as_str().unwrap().contains("r-abc23456"));
        let blocks = m["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "section");
        assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
        let actions = &blocks[3];
        assert_eq!(actions["type"], "actions");
        let buttons = actions["elements"].as_array().unwrap();
        assert_eq!(buttons.len(), 2);
        for (b, id, style) in [
            (&buttons[0], SLACK_APPROVE, "primary"),
            (&buttons[1], SLACK_DENY, "danger"),
        ] {
            assert_eq!(b["type"], "button");
            assert_eq!(b["action_id"], id);
            assert_eq!(b["style"], style);
            assert_eq!(b["value"], "r-abc23456");
            assert_eq!(b["text"]["type"], "plain_text");
        }
    }

    /// A `block_actions` payload shaped as Slack documents it (form-encoded `payload`).
    #[test]
    fn slack_block_actions_are_read() {
        let payload = json!({
            "type": "block_actions",
            "user": { "id": "U0BOB", "username": "bob", "name": "bob", "team_id": "T1" },
            "api_app_id": "A1",
            "token": "legacy",
            "container": { "type": "message", "message_ts": "1.2", "channel_id": "C1", "is_ephemeral": false },
            "trigger_id": "1.2.3",
            "team": { "id": "T1", "domain": "example" },
            "channel": { "id": "C1", "name": "db-approvals" },
            "response_url": "https://hooks.slack.com/actions/T1/1/abc",
            "actions": [{
                "action_id": SLACK_DENY,
                "block_id": "weir_r-abc23456",
                "text": { "type": "plain_text", "text": "Deny" },
                "value": "r-abc23456",
                "style": "danger",
                "type": "button",
                "action_ts": "1.3"
            }]
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        let a = parse_slack_action(body.as_bytes()).unwrap();
        assert_eq!(
            a,
            SlackAction {
                approve: false,
                request: "r-abc23456".into(),
                user_id: "U0BOB".into(),
                user_name: "bob".into(),
                response_url: Some("https://hooks.slack.com/actions/T1/1/abc".into()),
            }
        );
        assert!(parse_slack_action(b"payload=%7B%22type%22%3A%22view_submission%22%7D").is_none());
        assert!(parse_slack_action(b"garbage").is_none());
    }
}
