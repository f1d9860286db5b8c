//! Weir as a MySQL client of a target: connect (over TLS when `upstream_tls` says so),
//! authenticate with the target's credentials (`mysql_native_password`,
//! `caching_sha2_password` with its fast path and its full authentication: the password in
//! clear over TLS, RSA-OAEP encrypted with the server's key otherwise), and run Weir's own
//! text queries (the session's settings, the masking catalog).

use std::sync::Arc;

use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA1_MGF1SHA1};
use base64::Engine as _;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use weir_config::{Target, UpstreamTls};
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
    #[error("TLS: {0}")]
    Tls(String),
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
        let mut conn = Conn::toward_upstream(Stream::Plain(tcp), max);
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
/// `tls` is the target's client configuration (`None` when `upstream_tls = "disable"`).
pub(crate) async fn connect(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_caps: u32,
    charset: u8,
    max: usize,
    timeout: std::time::Duration,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(
        timeout,
        connect_inner(target, tls, client_caps, charset, max),
    )
    .await
    .map_err(|_| UpstreamError::Timeout)?
}

async fn connect_inner(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
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
    let mut conn = Conn::toward_upstream(Stream::Plain(tcp), max);
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
    let mut response = HandshakeResponse {
        capabilities: caps,
        max_packet: 1 << 24,
        charset,
        user: target.user.as_bytes().to_vec(),
        auth_response: scramble(&plugin, password.as_bytes(), &nonce)?,
        database: Some(target.database.as_bytes().to_vec()),
        auth_plugin: Some(plugin.clone()),
        attributes: None,
    };
    // TLS is asked for with an SSLRequest (the response's first 32 bytes with the SSL flag),
    // then the handshake response follows inside TLS. A server that offers no TLS is refused
    // rather than spoken to in clear.
    let secure = match (tls, target.upstream_tls) {
        (_, UpstreamTls::Disable) => false,
        (Some(cfg), UpstreamTls::Require | UpstreamTls::VerifyFull) => {
            if hello.capabilities & cap::SSL == 0 {
                return Err(UpstreamError::Tls(
                    "the server does not offer TLS, and upstream_tls requires it".into(),
                ));
            }
            response.capabilities |= cap::SSL;
            conn.send(&response.ssl_request()).await?;
            start_tls(&mut conn, cfg, &target.upstream_server_name).await?;
            true
        }
        // TLS required and no client configuration for it: never fall back to cleartext.
        (None, _) => {
            return Err(UpstreamError::Tls(
                "upstream_tls requires TLS and no TLS configuration was given".into(),
            ))
        }
    };
    conn.send(&response.encode()).await?;
    let mut asked_key = false;
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
            // 0x04 asks for the password in full: in clear inside TLS, otherwise encrypted
            // with the server's RSA key, which Weir asks for (0x02) and the server sends as
            // 0x01 and a PEM document.
            Some(0x01) if p.get(1) == Some(&0x03) && p.len() == 2 => {}
            Some(0x01) if p.get(1) == Some(&0x04) && p.len() == 2 => {
                if plugin != b"caching_sha2_password" {
                    return Err(ConnError::Protocol(mysql::MyError::Invalid(
                        "full authentication asked outside caching_sha2_password",
                    ))
                    .into());
                }
                if secure {
                    let mut clear = password.as_bytes().to_vec();
                    clear.push(0);
                    conn.send(&clear).await?;
                } else {
                    asked_key = true;
                    conn.send(&[0x02]).await?;
                }
            }
            Some(0x01) if asked_key => {
                asked_key = false;
                let pem = p.get(1..).unwrap_or_default();
                let sealed = rsa_sealed_password(password.as_bytes(), &nonce, pem)?;
                conn.send(&sealed).await?;
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

/// Upgrades the upstream connection to TLS, checking the certificate as the target's
/// configuration says. Nothing may be buffered from before (the server waits for the
/// ClientHello).
async fn start_tls(
    conn: &mut Conn,
    cfg: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<(), UpstreamError> {
    if conn.buffered() > 0 {
        return Err(UpstreamError::Tls(
            "the server sent bytes before the TLS handshake".into(),
        ));
    }
    let Stream::Plain(tcp) = std::mem::replace(&mut conn.stream, Stream::Closed) else {
        return Err(UpstreamError::Tls("the connection is not plain TCP".into()));
    };
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| UpstreamError::Tls(format!("server name {server_name:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    conn.stream = Stream::Client(Box::new(tls));
    Ok(())
}

/// caching_sha2_password's full authentication without TLS: the password and a NUL, XORed
/// with the nonce (repeated), encrypted with RSA-OAEP (SHA-1, MGF1-SHA-1) under the
/// server's public key (`pem`, a SubjectPublicKeyInfo).
///
/// The key is the server's word for itself, asked over the same unencrypted connection, as
/// the mysql client's `--get-server-public-key` does; an attacker on the path could answer
/// with their own. `upstream_tls = "verify-full"` is the setting that rules that out.
fn rsa_sealed_password(
    password: &[u8],
    nonce: &[u8],
    pem: &[u8],
) -> Result<Vec<u8>, UpstreamError> {
    let bad = |what: &str| UpstreamError::Unsupported(format!("the server's RSA key: {what}"));
    let text = std::str::from_utf8(pem).map_err(|_| bad("not text"))?;
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| bad("not PEM"))?;
    let key = PublicEncryptingKey::from_der(&der).map_err(|e| bad(&e.to_string()))?;
    let key = OaepPublicEncryptingKey::new(key).map_err(|_| bad("not an RSA key"))?;
    let nonce = nonce.get(..20).unwrap_or(nonce);
    if nonce.is_empty() {
        return Err(bad("no nonce to mix the password with"));
    }
    let mut clear = password.to_vec();
    clear.push(0);
    for (b, n) in clear.iter_mut().zip(nonce.iter().cycle()) {
        *b ^= n;
    }
    if clear.len() > key.max_plaintext_size(&OAEP_SHA1_MGF1SHA1) {
        return Err(bad("too small for the password"));
    }
    let mut sealed = vec![0; key.ciphertext_size()];
    let n = key
        .encrypt(&OAEP_SHA1_MGF1SHA1, &clear, &mut sealed, None)
        .map_err(|_| bad("encryption failed"))?
        .len();
    sealed.truncate(n);
    Ok(sealed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};

    /// The sealed password opens with the private key to what MySQL's server expects:
    /// password and NUL, XORed with the nonce repeated.
    #[test]
    fn full_authentication_seals_the_password_for_the_servers_key() {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let der = private.public_key().as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        let nonce: Vec<u8> = (1..=20).collect();
        let password = b"a password longer than the twenty-byte nonce";
        let sealed = rsa_sealed_password(password, &nonce, pem.as_bytes()).unwrap();
        assert_eq!(sealed.len(), 256);

        let opener = OaepPrivateDecryptingKey::new(private).unwrap();
        let mut out = vec![0; opener.min_output_size()];
        let opened = opener
            .decrypt(&OAEP_SHA1_MGF1SHA1, &sealed, &mut out, None)
            .unwrap();
        let unmixed: Vec<u8> = opened
            .iter()
            .zip(nonce.iter().cycle())
            .map(|(b, n)| b ^ n)
            .collect();
        let mut expected = password.to_vec();
        expected.push(0);
        assert_eq!(unmixed, expected);

        assert!(rsa_sealed_password(
            password,
            &nonce,
            b"-----BEGIN PUBLIC KEY-----\nnot base64!\n"
        )
        .is_err());
        assert!(rsa_sealed_password(password, &[], pem.as_bytes()).is_err());
    }
}
