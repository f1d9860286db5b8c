//! A tool call's session on a MySQL target: a minimal MySQL client of Weir's own (protocol
//! 4.1, text protocol) on one end of an in-process pipe, [`crate::my::run_pipe`] on the
//! other, logged in as the caller with the caller's own token. The statement goes through
//! the MySQL adapter exactly as a `mariadb -e` would: analysis, policy, approvals, masking,
//! the trail.

use std::sync::Arc;

use serde_json::Value;
use weir_config::Target;
use weir_wire::mysql::{
    self, cap, status, ColumnDef, EofPacket, ErrPacket, First, HandshakeResponse, OkPacket,
};

use super::session::Collected;
use super::{Caller, ToolError};
use crate::my::conn::{Conn, ConnError};
use crate::pipeline::Channel;
use crate::stream::Stream;
use crate::Shared;

const PIPE_BUFFER: usize = 64 * 1024;
/// Most columns a result may declare.
const MAX_COLUMNS: u64 = 4096;

/// What a tool call's client asks of the adapter (no TLS: the pipe is private).
const CAPABILITIES: u32 = cap::LONG_PASSWORD
    | cap::LONG_FLAG
    | cap::CONNECT_WITH_DB
    | cap::PROTOCOL_41
    | cap::TRANSACTIONS
    | cap::SECURE_CONNECTION
    | cap::MULTI_STATEMENTS
    | cap::MULTI_RESULTS
    | cap::PLUGIN_AUTH
    | cap::PLUGIN_AUTH_LENENC_CLIENT_DATA;

/// One logged-in session of the MySQL adapter.
pub(super) struct Session {
    conn: Conn,
}

fn broken(e: impl std::fmt::Display) -> ToolError {
    ToolError::new(format!("weir: the session to the target failed: {e}"))
}

/// The approval request a refusal of Weir's names: `request ID waits …`, or the
/// `(approval request ID)` the adapter appends to a message that names none.
fn approval_request(message: &str) -> Option<String> {
    let words: Vec<&str> = message.split_whitespace().collect();
    words.windows(2).find_map(|w| match w {
        ["request", id] => {
            let id = id.trim_end_matches([')', ';', ',', '.']);
            id.starts_with("r-").then(|| id.to_owned())
        }
        _ => None,
    })
}

/// An ERR packet as a tool error: Weir's own message (`weir: denied by …`) or the server's,
/// and the approval request a refusal names.
fn server_error(packet: &[u8]) -> ToolError {
    match ErrPacket::decode(packet) {
        Ok(e) => {
            let message = String::from_utf8_lossy(&e.message).into_owned();
            let request = approval_request(&message);
            ToolError { message, request }
        }
        Err(e) => broken(e),
    }
}

impl Session {
    /// Opens the caller's session on `target`. The adapter's task ends when the session is
    /// dropped.
    pub(super) async fn open(
        shared: &Arc<Shared>,
        caller: &Caller,
        target: &Target,
    ) -> Result<Session, ToolError> {
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        tokio::spawn(crate::my::run_pipe(
            theirs,
            caller.peer,
            Arc::clone(shared),
            Channel::Mcp,
        ));
        let mut conn = Conn::new(Stream::Pipe(ours), shared.config.gateway.max_message_size);
        let greeting = conn.read().await.map_err(broken)?;
        if greeting.first() == Some(&0xff) {
            return Err(server_error(&greeting));
        }
        let response = HandshakeResponse {
            capabilities: CAPABILITIES,
            max_packet: 1 << 24,
            charset: 45,
            user: caller.identity.name.as_bytes().to_vec(),
            auth_response: caller.token.as_bytes().to_vec(),
            database: Some(target.name.as_bytes().to_vec()),
            auth_plugin: Some(b"mysql_clear_password".to_vec()),
            attributes: None,
        };
        conn.send(&response.encode()).await.map_err(broken)?;
        let answer = conn.read().await.map_err(broken)?;
        match answer.first() {
            Some(0x00) => Ok(Session { conn }),
            Some(0xff) => Err(server_error(&answer)),
            _ => Err(broken("unexpected answer to the login")),
        }
    }

    /// Runs `sql` (one COM_QUERY: one or more statements, as `mariadb -e`) and keeps the
    /// last result that had columns, at most `max_rows` rows and `max_bytes` of values.
    pub(super) async fn run(
        &mut self,
        sql: &str,
        max_rows: u64,
        max_bytes: u64,
    ) -> Result<Collected, ToolError> {
        self.run_inner(sql, max_rows, max_bytes)
            .await
            .map_err(|e| match e {
                Failure::Tool(t) => t,
                Failure::Conn(c) => broken(c),
            })
    }

    async fn run_inner(
        &mut self,
        sql: &str,
        max_rows: u64,
        max_bytes: u64,
    ) -> Result<Collected, Failure> {
        let conn = &mut self.conn;
        conn.seq = 0;
        let mut packet = Vec::with_capacity(sql.len() + 1);
        packet.push(mysql::com::QUERY);
        packet.extend_from_slice(sql.as_bytes());
        conn.send(&packet).await?;
        let mut last: Option<Collected> = None;
        loop {
            let first = conn.read().await?;
            let more = match First::classify(&first).map_err(ConnError::from)? {
                First::Ok => {
                    let ok = OkPacket::decode(&first).map_err(ConnError::from)?;
                    ok.status & status::MORE_RESULTS_EXISTS != 0
                }
                First::Err => return Err(Failure::Tool(server_error(&first))),
                First::LocalInfile => {
                    return Err(Failure::Tool(broken("the server asked for a local file")))
                }
                First::Columns(n) if n > MAX_COLUMNS => {
                    return Err(Failure::Tool(broken("too many columns in a result")))
                }
                First::Columns(n) => {
                    let n = usize::try_from(n).unwrap_or(0);
                    let mut c = Collected {
                        columns: Vec::with_capacity(n),
                        rows: Vec::new(),
                        truncated: false,
                    };
                    for _ in 0..n {
                        let def =
                            ColumnDef::decode(&conn.read().await?).map_err(ConnError::from)?;
                        c.columns
                            .push(String::from_utf8_lossy(&def.name).into_owned());
                    }
                    if !EofPacket::is_eof(&conn.read().await?) {
                        return Err(Failure::Tool(broken("expected EOF after the columns")));
                    }
                    let mut bytes = 0u64;
                    let more = loop {
                        let p = conn.read().await?;
                        if EofPacket::is_eof(&p) {
                            let eof = EofPacket::decode(&p).map_err(ConnError::from)?;
                            break eof.status & status::MORE_RESULTS_EXISTS != 0;
                        }
                        if p.first() == Some(&0xff) {
                            return Err(Failure::Tool(server_error(&p)));
                        }
                        if c.truncated {
                            continue;
                        }
                        if c.rows.len() as u64 >= max_rows {
                            c.truncated = true;
                            continue;
                        }
                        let fields = mysql::text_row(&p, n).map_err(ConnError::from)?;
                        let mut values = Vec::with_capacity(n);
                        for f in fields {
                            bytes = bytes.saturating_add(f.map_or(4, |v| v.len() as u64));
                            values.push(f.map_or(Value::Null, |v| {
                                Value::String(String::from_utf8_lossy(v).into_owned())
                            }));
                        }
                        if bytes > max_bytes {
                            c.truncated = true;
                            continue;
                        }
                        c.rows.push(Value::Array(values));
                    };
                    last = Some(c);
                    more
                }
            };
            if !more {
                break;
            }
        }
        Ok(last.unwrap_or(Collected {
            columns: Vec::new(),
            rows: Vec::new(),
            truncated: false,
        }))
    }
}

enum Failure {
    Tool(ToolError),
    Conn(ConnError),
}

impl From<ConnError> for Failure {
    fn from(e: ConnError) -> Failure {
        Failure::Conn(e)
    }
}

/// The tables and views of a MySQL target's database and their columns, in column order.
pub(super) const DESCRIBE: &str = "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE \
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION";

#[cfg(test)]
mod tests {
    use super::approval_request;

    #[test]
    fn the_request_a_refusal_names() {
        assert_eq!(
            approval_request("weir: approval required by x: …; request r-5wvqt6fg waits for an approver (weir approve r-5wvqt6fg)").as_deref(),
            Some("r-5wvqt6fg")
        );
        assert_eq!(
            approval_request("weir: denied by x: too broad (approval request r-abc)").as_deref(),
            Some("r-abc")
        );
        assert_eq!(
            approval_request("weir: denied by weir.where-required-in-production: …"),
            None
        );
    }
}
