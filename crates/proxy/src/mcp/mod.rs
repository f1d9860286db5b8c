//! Weir's MCP server: the targets as tools for agents (`list_targets`, `describe_target`,
//! `query`, `request_access`), over stdio (`weir mcp`) and Streamable HTTP (`POST /mcp`,
//! [`http`]).
//!
//! **Boundary:** this module decides nothing. A tool that runs SQL (`query`,
//! `describe_target`) opens a session *through the gateway's own adapter* of the target's
//! engine over an in-process pipe ([`session`]: tokio-postgres to the PostgreSQL adapter;
//! [`mysql`]: a minimal MySQL client to the MySQL adapter), as the caller, so the statement takes the same
//! authentication, analysis, policy, write-ahead audit, approval, masking and completion as
//! a wire client's — one code path, not a copy. The only difference is the session's
//! [`Channel`]: an MCP session cannot wait for an approver, so a statement that needs one is
//! refused at once naming its request, and runs when repeated after approval.
//!
//! **Invariant:** every tool call is recorded (`tool_call`) before it does anything, and a
//! call whose record fails does not run.

use std::net::SocketAddr;
use std::sync::Arc;

use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde_json::{json, Value};
use weir_audit::Event;
use weir_policy::Identity;

use crate::Shared;

pub mod http;
mod mysql;
mod session;

pub use crate::pipeline::Channel;

/// Who calls: the identity a token proves, the token (the tool's session logs in with it,
/// so revocation and expiry hold per call), and where the call came from.
#[derive(Clone)]
pub struct Caller {
    pub identity: Identity,
    token: Arc<str>,
    pub peer: SocketAddr,
}

impl Caller {
    /// Verifies `token` (a Weir token, a static identity's token or an ID token).
    pub async fn verify(
        shared: &Shared,
        token: &str,
        peer: SocketAddr,
    ) -> Result<Caller, crate::auth::AuthError> {
        let identity = shared.auth.verify_any(token.trim().as_bytes()).await?;
        Ok(Caller {
            identity,
            token: Arc::from(token.trim()),
            peer,
        })
    }
}

/// The MCP server for one caller (stdio), or for whoever each HTTP request proves.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
    /// The stdio caller; `None` on HTTP, where each request carries its own.
    caller: Option<Caller>,
}

impl Server {
    /// A server for `weir mcp`: every call is `caller`'s.
    pub fn stdio(shared: Arc<Shared>, caller: Caller) -> Server {
        Server {
            shared,
            caller: Some(caller),
        }
    }

    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Option<Caller> {
        if let Some(c) = &self.caller {
            return Some(c.clone());
        }
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
    }
}

/// A tool's failure as the agent sees it: `isError` with the text (`weir: denied by …`) and,
/// when it concerns an approval request, its id in the structured content.
struct ToolError {
    message: String,
    request: Option<String>,
}

impl ToolError {
    fn new(message: impl Into<String>) -> ToolError {
        ToolError {
            message: message.into(),
            request: None,
        }
    }

    fn result(self) -> CallToolResult {
        let mut value = serde_json::Map::new();
        value.insert("error".into(), json!(self.message));
        if let Some(id) = &self.request {
            value.insert("approval_request".into(), json!(id));
        }
        let mut r = CallToolResult::structured_error(Value::Object(value));
        r.content = vec![ContentBlock::text(self.message)];
        r
    }
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn tools() -> Vec<Tool> {
    let read_only = |title: &str| {
        ToolAnnotations::with_title(title)
            .read_only(true)
            .destructive(false)
    };
    vec![
        Tool::new(
            "list_targets",
            "The databases this gateway fronts: name, engine, environment.",
            schema(json!({ "type": "object", "properties": {} })),
        )
        .with_annotations(read_only("List targets")),
        Tool::new(
            "describe_target",
            "The tables and columns of a target, with each column's type and whether Weir treats it as sensitive (masked unless policy lets you see it).",
            schema(json!({
                "type": "object",
                "properties": { "target": { "type": "string", "description": "a target name from list_targets" } },
                "required": ["target"]
            })),
        )
        .with_annotations(read_only("Describe a target")),
        Tool::new(
            "query",
            "Runs SQL on a target as you, through Weir's policy, masking, approval and audit. A denied statement is an error starting `weir: denied by <rule>`; one that needs approval is an error naming the approval request, and runs when you send the same statement again after it is approved.",
            schema(json!({
                "type": "object",
                "properties": {
                    "target": { "type": "string", "description": "a target name from list_targets" },
                    "sql": { "type": "string", "description": "the SQL to run" },
                    "max_rows": { "type": "integer", "minimum": 1, "description": "the most rows to return (default 1000)" }
                },
                "required": ["target", "sql"]
            })),
        )
        .with_annotations(
            ToolAnnotations::with_title("Run SQL")
                .read_only(false)
                .destructive(true),
        ),
        Tool::new(
            "request_access",
            "Asks approvers for just-in-time access to a target for a while (e.g. \"2h\"), with a reason.",
            schema(json!({
                "type": "object",
                "properties": {
                    "target": { "type": "string" },
                    "duration": { "type": "string", "description": "how long, e.g. 30m or 2h" },
                    "reason": { "type": "string", "description": "why: approvers decide on it" }
                },
                "required": ["target", "duration", "reason"]
            })),
        )
        .with_annotations(
            ToolAnnotations::with_title("Request access")
                .read_only(false)
                .destructive(false),
        ),
    ]
}

fn text_arg<'a>(args: &'a JsonObject, name: &str) -> Result<&'a str, ToolError> {
    args.get(name).and_then(Value::as_str).ok_or_else(|| {
        ToolError::new(format!(
            "weir: the argument {name:?} (a string) is required"
        ))
    })
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("weir", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Weir is an identity-aware database gateway. Every statement you run is checked against policy as your identity, masked where values are sensitive, may need a human's approval, and is recorded in a tamper-evident audit trail.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(caller) = self.caller(&context) else {
            return Err(ErrorData::invalid_request(
                "no identity: a bearer token is required",
                None,
            ));
        };
        // The stdio caller was verified at start; a token revoked or expired since (or a
        // person its agent acts for who can no longer act) stops every later call, also
        // those that open no database session (`list_targets`, `request_access`). HTTP
        // verified this request's token already.
        if self.caller.is_some() {
            if let Err(e) = Caller::verify(&self.shared, &caller.token, caller.peer).await {
                return Ok(ToolError::new(format!(
                    "weir: the token of this MCP session is no longer valid: {e}"
                ))
                .result()
                .into());
            }
        }
        let args = request.arguments.unwrap_or_default();
        let result = match self.call(&caller, &request.name, &args).await {
            Ok(value) => CallToolResult::structured(value),
            Err(e) => e.result(),
        };
        Ok(result.into())
    }
}

impl Server {
    async fn call(
        &self,
        caller: &Caller,
        tool: &str,
        args: &JsonObject,
    ) -> Result<Value, ToolError> {
        if !tools().iter().any(|t| t.name == tool) {
            return Err(ToolError::new(format!("weir: no tool named {tool:?}")));
        }
        let target = args.get("target").and_then(Value::as_str);
        self.record(caller, tool, target).await?;
        match tool {
            "list_targets" => Ok(self.list_targets()),
            "describe_target" => {
                let target = self.target(text_arg(args, "target")?)?;
                session::describe(&self.shared, caller, &target).await
            }
            "query" => {
                let target = self.target(text_arg(args, "target")?)?;
                let sql = text_arg(args, "sql")?;
                let cfg = &self.shared.config.mcp;
                let max_rows = match args.get("max_rows") {
                    None | Some(Value::Null) => cfg.max_rows,
                    Some(v) => match v.as_u64() {
                        Some(n) if n >= 1 => n.min(cfg.max_rows.saturating_mul(10)),
                        _ => {
                            return Err(ToolError::new(
                                "weir: max_rows must be a whole number of at least 1",
                            ))
                        }
                    },
                };
                session::query(&self.shared, caller, &target, sql, max_rows).await
            }
            _ => {
                let target = self.target(text_arg(args, "target")?)?;
                let duration = text_arg(args, "duration")?;
                let reason = text_arg(args, "reason")?;
                self.request_access(caller, &target.name, duration, reason)
                    .await
            }
        }
    }

    /// The tool call's own record, before it runs.
    async fn record(
        &self,
        caller: &Caller,
        tool: &str,
        target: Option<&str>,
    ) -> Result<(), ToolError> {
        let event = Event::ToolCall {
            identity: caller.identity.name.clone(),
            identity_kind: caller.identity.kind.as_str(),
            tool: tool.to_owned(),
            target: target.map(str::to_owned),
            client_addr: caller.peer.to_string(),
            on_behalf_of: caller.identity.on_behalf_of.clone(),
        };
        self.shared.audit.append(event).wait().await.map_err(|e| {
            ToolError::new(format!(
                "weir: the tool call cannot be recorded, so it does not run: {e}"
            ))
        })
    }

    fn target(&self, name: &str) -> Result<weir_config::Target, ToolError> {
        self.shared
            .config
            .target(name)
            .cloned()
            .ok_or_else(|| ToolError::new(format!("weir: no target named {name:?}")))
    }

    fn list_targets(&self) -> Value {
        let targets: Vec<Value> = self
            .shared
            .config
            .targets
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "engine": match t.engine {
                        weir_config::Engine::Postgres => "postgres",
                        weir_config::Engine::Mysql => "mysql",
                    },
                    "environment": t.environment.as_str(),
                })
            })
            .collect();
        json!({ "targets": targets })
    }

    async fn request_access(
        &self,
        caller: &Caller,
        target: &str,
        duration: &str,
        reason: &str,
    ) -> Result<Value, ToolError> {
        let grant = humantime::parse_duration(duration)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ToolError::new(format!(
                    "weir: duration {duration:?}: expected a length of time such as 30m or 2h"
                ))
            })?;
        if reason.trim().is_empty() {
            return Err(ToolError::new(
                "weir: a reason is required: approvers decide on it",
            ));
        }
        let shared = &self.shared;
        let now = shared.approvals.clock().now_ms();
        let (event, new) =
            crate::approvals::access_request(&caller.identity, target, grant, reason, now);
        let id = new.id.clone();
        shared
            .audit
            .append(event)
            .wait()
            .await
            .map_err(|e| ToolError::new(format!("weir: the request cannot be recorded: {e}")))?;
        let stored = shared
            .approvals
            .create(new)
            .await
            .map_err(|e| ToolError::new(format!("weir: the request cannot be stored: {e}")))?;
        if shared.notifier.enabled() {
            let notifier = Arc::clone(&shared.notifier);
            let store = Arc::clone(shared.approvals.store());
            tokio::spawn(async move { notifier.announce(stored, store).await });
        }
        Ok(json!({
            "request": id,
            "status": "pending",
            "target": target,
            "duration": humantime::format_duration(grant).to_string(),
            "message": format!("access request {id} is waiting for an approver (weir approve {id} --as NAME)"),
        }))
    }
}

/// Serves MCP over stdin/stdout as `caller` until the client closes stdin.
pub async fn serve_stdio(shared: Arc<Shared>, caller: Caller) -> Result<(), String> {
    use rmcp::ServiceExt as _;
    // Access grants approved meanwhile, and their expiry, reach this process too.
    let grants = tokio::spawn(Arc::clone(&shared.grants).run(Arc::clone(&shared.audit)));
    let baselines = tokio::spawn(Arc::clone(&shared.baselines).run());
    let shared_after = Arc::clone(&shared);
    let served = async {
        let running = Server::stdio(shared, caller)
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| format!("starting the MCP session: {e}"))?;
        running
            .waiting()
            .await
            .map(|_| ())
            .map_err(|e| format!("the MCP session failed: {e}"))
    };
    let result = served.await;
    grants.abort();
    baselines.abort();
    shared_after.baselines.flush().await;
    result
}
