//! A tool call's database session: a PostgreSQL client (tokio-postgres) on one end of an
//! in-process pipe, the gateway's own PostgreSQL adapter (`crate::pg::run_pipe`) on the
//! other, logged in as the caller with the caller's token. What the tool gets back is what a
//! wire client would: masked values, Weir's refusals as errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_postgres::{Client, SimpleQueryMessage};
use weir_config::Target;

use super::{Caller, Channel, ToolError};
use crate::Shared;

/// Bytes the pipe buffers each way: one frame or so; the pipe applies backpressure.
const PIPE_BUFFER: usize = 64 * 1024;

/// Opens the caller's session on `target`. The connection task ends when the client is
/// dropped.
async fn open(shared: &Arc<Shared>, caller: &Caller, target: &Target) -> Result<Client, ToolError> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    tokio::spawn(crate::pg::run_pipe(
        theirs,
        caller.peer,
        Arc::clone(shared),
        Channel::Mcp,
    ));
    let mut cfg = tokio_postgres::Config::new();
    cfg.user(&caller.identity.name)
        .password(caller.token.as_bytes())
        .dbname(&target.name)
        .application_name("weir-mcp")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, connection) = cfg
        .connect_raw(ours, tokio_postgres::NoTls)
        .await
        .map_err(from_pg)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(cause = %e, "MCP session ended");
        }
    });
    Ok(client)
}

/// A PostgreSQL error as a tool error: Weir's own message (`weir: denied by …`) or the
/// server's, and the approval request a refusal names.
fn from_pg(e: tokio_postgres::Error) -> ToolError {
    match e.as_db_error() {
        Some(db) => ToolError {
            message: db.message().to_owned(),
            request: db
                .detail()
                .and_then(|d| d.strip_prefix("approval request "))
                .map(str::to_owned),
        },
        None => ToolError::new(format!("weir: the session to the target failed: {e}")),
    }
}

/// What one statement returned, within the caps.
pub(super) struct Collected {
    pub(super) columns: Vec<String>,
    pub(super) rows: Vec<Value>,
    pub(super) truncated: bool,
}

/// Runs `sql` (simple protocol: one or more statements, as psql's `-c`) and keeps the last
/// result that had columns, at most `max_rows` rows and `[mcp] max_result_bytes` of values.
async fn run(
    shared: &Shared,
    client: &Client,
    sql: &str,
    max_rows: u64,
) -> Result<Collected, ToolError> {
    let max_bytes = shared.config.mcp.max_result_bytes;
    let stream = client.simple_query_raw(sql).await.map_err(from_pg)?;
    futures_util::pin_mut!(stream);
    let mut current: Option<Collected> = None;
    let mut last: Option<Collected> = None;
    let mut bytes = 0u64;
    while let Some(message) = stream.next().await {
        match message.map_err(from_pg)? {
            SimpleQueryMessage::RowDescription(columns) => {
                bytes = 0;
                current = Some(Collected {
                    columns: columns.iter().map(|c| c.name().to_owned()).collect(),
                    rows: Vec::new(),
                    truncated: false,
                });
            }
            SimpleQueryMessage::Row(row) => {
                let Some(c) = current.as_mut() else { continue };
                if c.truncated {
                    continue;
                }
                if c.rows.len() as u64 >= max_rows {
                    c.truncated = true;
                    continue;
                }
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    let v = row.try_get(i).map_err(from_pg)?;
                    bytes = bytes.saturating_add(v.map_or(4, |s| s.len() as u64));
                    values.push(v.map_or(Value::Null, |s| Value::String(s.to_owned())));
                }
                if bytes > max_bytes {
                    c.truncated = true;
                    continue;
                }
                c.rows.push(Value::Array(values));
            }
            SimpleQueryMessage::CommandComplete(_) => {
                if let Some(c) = current.take() {
                    last = Some(c);
                }
            }
            _ => {}
        }
    }
    Ok(last.or(current).unwrap_or(Collected {
        columns: Vec::new(),
        rows: Vec::new(),
        truncated: false,
    }))
}

/// Runs `sql` in a new session of the caller on `target`, through the adapter of the
/// target's engine.
async fn run_on(
    shared: &Arc<Shared>,
    caller: &Caller,
    target: &Target,
    sql: &str,
    max_rows: u64,
) -> Result<Collected, ToolError> {
    match target.engine {
        weir_config::Engine::Postgres => {
            let client = open(shared, caller, target).await?;
            run(shared, &client, sql, max_rows).await
        }
        weir_config::Engine::Mysql => {
            let mut session = super::mysql::Session::open(shared, caller, target).await?;
            session
                .run(sql, max_rows, shared.config.mcp.max_result_bytes)
                .await
        }
    }
}

/// The `query` tool.
pub(super) async fn query(
    shared: &Arc<Shared>,
    caller: &Caller,
    target: &Target,
    sql: &str,
    max_rows: u64,
) -> Result<Value, ToolError> {
    let result = run_on(shared, caller, target, sql, max_rows).await?;
    Ok(json!({
        "columns": result.columns,
        "row_count": result.rows.len(),
        "rows": result.rows,
        "truncated": result.truncated,
    }))
}

/// The user relations of a PostgreSQL target and their columns, in column order.
const DESCRIBE: &str = "SELECT n.nspname, c.relname, a.attname, \
pg_catalog.format_type(a.atttypid, a.atttypmod) \
FROM pg_catalog.pg_attribute a \
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
ORDER BY 1, 2, a.attnum";

/// The `describe_target` tool: the relations as the caller's session sees them (the catalog
/// query goes through policy and the trail like any other), each column marked sensitive as
/// Weir's masking catalog classifies it.
pub(super) async fn describe(
    shared: &Arc<Shared>,
    caller: &Caller,
    target: &Target,
) -> Result<Value, ToolError> {
    let describe = match target.engine {
        weir_config::Engine::Postgres => DESCRIBE,
        weir_config::Engine::Mysql => super::mysql::DESCRIBE,
    };
    let result = run_on(shared, caller, target, describe, u64::MAX).await?;
    let catalog = match shared.upstreams.catalog(&target.name) {
        Some(cache) => {
            cache.ensure(shared, target).await.map_err(|e| {
                ToolError::new(format!("weir: cannot read the target's catalog: {e}"))
            })?;
            Some(cache.snapshot())
        }
        None => None,
    };
    let mut tables: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in &result.rows {
        let cell = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or("");
        let (schema, table, column, ty) = (cell(0), cell(1), cell(2), cell(3));
        let name = format!("{schema}.{table}");
        // A column Weir cannot classify counts as sensitive: it would be masked.
        let sensitive = catalog.as_ref().is_none_or(|c| {
            c.column_by_name(&name, column)
                .is_none_or(|col| col.sensitive.is_some())
        });
        tables.entry(name).or_default().push(json!({
            "name": column,
            "type": ty,
            "sensitive": sensitive,
        }));
    }
    let tables: Vec<Value> = tables
        .into_iter()
        .map(|(name, columns)| json!({ "name": name, "columns": columns }))
        .collect();
    // A catalog larger than `[mcp] max_result_bytes` is cut off like any result, and says so.
    Ok(json!({ "tables": tables, "truncated": result.truncated }))
}
