//! Weir as a MySQL client of a target: connect, authenticate with the target's credentials
//! (`mysql_native_password`, `caching_sha2_password`'s fast path), and run Weir's own text
//! queries (the session's settings, the masking catalog).

use tokio::net::TcpStream;
use weir_config::Target;
use weir_wire::mysql::{
    self, cap, AuthSwitch, ColumnDef, EofPacket, ErrPacket, First, Handshake, HandshakeResponse,
    OkPacket,
};

use super::conn::{Conn, ConnError};
use crate::stream::Stream;

/// What Weir asks of a target beyond what the client asked: protocol 4.1 with plugin auth,
/// and a database. Never `LOCAL_FILES` (a gateway must not read local files for anyone),
/// compression, `DEPRECATE_EOF`, session tracking, query attributes or `IGNORE_SPACE`
/// (which changes how the server reads function names).
pub(crate) const FORWARDED_CAPS: u32 = cap::LONG_PASSWORD
    | cap::FOUND_ROWS
    | cap::LONG_FLAG
    | cap::CONNECT_WITH_DB
    | cap::PROTOCOL_41
    | cap::TRANSACTIONS
    | cap::SECURE_CONNECTION
    | cap::MULTI_STATEMENTS
    | cap::MULTI_RESULTS
    | cap::PS_MULTI_RESULTS
    | cap::PLUGIN_AUTH
    | cap::PLUGIN_AUTH_LENENC_CLIENT_DATA;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting timed out")]
    Timeout,
    #[error("{0}")]
    Conn(#[from] ConnError),
    #[error("the server refused: {code} {message}")]
    Refused { code: u16, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("credentials: {0}")]
    Credentials(String),
}

/// An authenticated upstream session.
pub(crate) struct Upstream {
    pub conn: Conn,
    pub server_version: String,
    pub connection_id: u32,
    pub status: u16,
}

/// The version a target's server announces in its greeting (nothing is sent to it).
pub(crate) async fn server_version(target: &Target, max: usize) -> Option<String> {
    let probe = async {
        let tcp = TcpStream::connect(&target.upstream).await.ok()?;
        let mut conn = Conn::new(Stream::Plain(tcp), max);
        let greeting = conn.read().await.ok()?;
        Handshake::decode(&greeting)
            .ok()
            .map(|h| String::from_utf8_lossy(&h.server_version).into_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
}

/// Connects and logs in as the target's user, into the target's database. `client_caps`
/// are what the client asked for (intersected with [`FORWARDED_CAPS`] and the server's).
pub(crate) async fn connect(
    target: &Target,
    client_caps: u32,
    charset: u8,
    max: usize,
    timeout: std::time::Duration,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(timeout, connect_inner(target, client_caps, charset, max))
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

async fn connect_inner(
    target: &Target,
    client_caps: u32,
    charset: u8,
    max: usize,
) -> Result<Upstream, UpstreamError> {
    let tcp = TcpStream::connect(&target.upstream)
        .await
        .map_err(|source| UpstreamError::Connect {
            addr: target.upstream.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(Stream::Plain(tcp), max);
    let greeting = conn.read().await?;
    if greeting.first() == Some(&0xff) {
        let e = ErrPacket::decode(&greeting).map_err(ConnError::from)?;
        return Err(refused(&e));
    }
    let hello = Handshake::decode(&greeting).map_err(ConnError::from)?;
    let password = target
        .password()
        .map_err(|e| UpstreamError::Credentials(e.to_string()))?;
    let caps = (client_caps & FORWARDED_CAPS & hello.capabilities)
        | (cap::PROTOCOL_41 | cap::SECURE_CONNECTION | cap::PLUGIN_AUTH | cap::CONNECT_WITH_DB)
            & hello.capabilities;
    if caps & cap::PROTOCOL_41 == 0 || caps & cap::PLUGIN_AUTH == 0 {
        return Err(UpstreamError::Unsupported(
            "the server does not speak protocol 4.1 with authentication plugins".into(),
        ));
    }
    let mut plugin = hello.auth_plugin.clone();
    let mut nonce = hello.auth_data.clone();
    let response = HandshakeResponse {
        capabilities: caps,
        max_packet: 1 << 24,
        charset,
        user: target.user.as_bytes().to_vec(),
        auth_response: scramble(&plugin, password.as_bytes(), &nonce)?,
        database: Some(target.database.as_bytes().to_vec()),
        auth_plugin: Some(plugin.clone()),
        attributes: None,
    };
    conn.send(&response.encode()).await?;
    loop {
        let p = conn.read().await?;
        match p.first() {
            Some(0x00) => {
                let ok = OkPacket::decode(&p).map_err(ConnError::from)?;
                return Ok(Upstream {
                    conn,
                    server_version: String::from_utf8_lossy(&hello.server_version).into_owned(),
                    connection_id: hello.connection_id,
                    status: ok.status,
                });
            }
            Some(0xff) => {
                let e = ErrPacket::decode(&p).map_err(ConnError::from)?;
                return Err(refused(&e));
            }
            Some(0xfe) => {
                let switch = AuthSwitch::decode(&p).map_err(ConnError::from)?;
                plugin = switch.plugin;
                nonce = switch.data;
                let answer = scramble(&plugin, password.as_bytes(), &nonce)?;
                conn.send(&answer).await?;
            }
            // caching_sha2_password: 0x01 0x03 is "fast auth succeeded" (OK follows); 0x01
            // 0x04 asks for the password in full, which needs TLS or the server's RSA key.
            Some(0x01) if p.get(1) == Some(&0x03) => {}
            Some(0x01) if p.get(1) == Some(&0x04) => {
                return Err(UpstreamError::Unsupported(
                    "caching_sha2_password full authentication (the server has not cached this user's password yet); log in once with the mysql client, or use mysql_native_password".into(),
                ))
            }
            _ => {
                return Err(ConnError::Protocol(mysql::MyError::Invalid(
                    "unexpected packet during authentication",
                ))
                .into())
            }
        }
    }
}

fn scramble(plugin: &[u8], password: &[u8], nonce: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    let nonce = nonce.get(..20).unwrap_or(nonce);
    match plugin {
        b"mysql_native_password" | b"" => Ok(mysql::native_scramble(password, nonce)),
        b"caching_sha2_password" => Ok(mysql::caching_sha2_scramble(password, nonce)),
        other => Err(UpstreamError::Unsupported(format!(
            "authentication plugin {} of the target",
            String::from_utf8_lossy(other)
        ))),
    }
}

fn refused(e: &ErrPacket) -> UpstreamError {
    UpstreamError::Refused {
        code: e.code,
        message: String::from_utf8_lossy(&e.message).into_owned(),
    }
}

/// A text query's result, read whole: for Weir's own small queries only.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub rows: Vec<Vec<Option<String>>>,
    pub status: u16,
}

/// Runs one of Weir's own statements on an upstream session and reads its whole result.
pub(crate) async fn query(conn: &mut Conn, sql: &str) -> Result<Rows, UpstreamError> {
    conn.seq = 0;
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(mysql::com::QUERY);
    payload.extend_from_slice(sql.as_bytes());
    conn.send(&payload).await?;
    let first = conn.read().await?;
    let n = match First::classify(&first).map_err(ConnError::from)? {
        First::Ok => {
            let ok = OkPacket::decode(&first).map_err(ConnError::from)?;
            return Ok(Rows {
                rows: Vec::new(),
                status: ok.status,
            });
        }
        First::Err => {
            let e = ErrPacket::decode(&first).map_err(ConnError::from)?;
            return Err(refused(&e));
        }
        First::LocalInfile => {
            return Err(ConnError::Protocol(mysql::MyError::Invalid(
                "the server asked for a local file",
            ))
            .into())
        }
        First::Columns(n) => usize::try_from(n).unwrap_or(usize::MAX).min(4096),
    };
    for _ in 0..n {
        ColumnDef::decode(&conn.read().await?).map_err(ConnError::from)?;
    }
    let eof = conn.read().await?;
    if !EofPacket::is_eof(&eof) {
        return Err(ConnError::Protocol(mysql::MyError::Invalid("expected EOF")).into());
    }
    let mut rows = Vec::new();
    loop {
        let p = conn.read().await?;
        if EofPacket::is_eof(&p) {
            let eof = EofPacket::decode(&p).map_err(ConnError::from)?;
            return Ok(Rows {
                rows,
                status: eof.status,
            });
        }
        if p.first() == Some(&0xff) {
            let e = ErrPacket::decode(&p).map_err(ConnError::from)?;
            return Err(refused(&e));
        }
        let fields = mysql::text_row(&p, n).map_err(ConnError::from)?;
        rows.push(
            fields
                .into_iter()
                .map(|f| f.map(|v| String::from_utf8_lossy(v).into_owned()))
                .collect(),
        );
    }
}

/// A string literal for Weir's own queries (the session runs with backslash escapes or
/// without: both quote `'` by doubling; a backslash is refused rather than guessed).
pub(crate) fn literal(s: &str) -> Option<String> {
    if s.contains('\\') || s.contains('\0') {
        return None;
    }
    Some(format!("'{}'", s.replace('\'', "''")))
}
