//! Opening an authenticated session to a target's upstream server.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_config::{Target, UpstreamTls};
use weir_wire::backend::{Authentication, Fields, Message as Backend};
use weir_wire::frontend::Message as Frontend;
use weir_wire::scram::{md5_password, ScramClient};
use weir_wire::startup::StartupPacket;

use crate::io::{read_frame, FrameError};
use crate::stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream {0} did not answer in time")]
    Timeout(String),
    #[error("upstream TLS: {0}")]
    Tls(String),
    #[error("upstream protocol: {0}")]
    Protocol(String),
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    /// The upstream refused the session with an error of its own (e.g. too many connections):
    /// these fields are safe to pass to the client.
    #[error("upstream refused the session")]
    Refused(Fields),
    #[error("{0}")]
    Credentials(String),
}

impl From<FrameError> for UpstreamError {
    fn from(e: FrameError) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

/// An upstream session that has finished startup and is ready for queries.
pub struct Upstream {
    pub stream: Stream,
    /// Bytes read past the final ReadyForQuery (normally none).
    pub leftover: BytesMut,
    /// ParameterStatus and NoticeResponse frames from startup, ready to relay to the client.
    pub startup_frames: BytesMut,
    pub process_id: i32,
    pub secret_key: Bytes,
}

pub struct ConnectParams<'a> {
    pub target: &'a Target,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Startup parameters from the client that Weir passes on.
    pub client_params: Vec<(String, String)>,
    pub max_message: usize,
    pub timeout: Duration,
}

pub async fn connect(p: ConnectParams<'_>) -> Result<Upstream, UpstreamError> {
    let addr = p.target.upstream.clone();
    tokio::time::timeout(p.timeout, connect_inner(p))
        .await
        .unwrap_or(Err(UpstreamError::Timeout(addr)))
}

async fn connect_inner(p: ConnectParams<'_>) -> Result<Upstream, UpstreamError> {
    let target = p.target;
    let password = target
        .password()
        .map_err(|e| UpstreamError::Credentials(e.to_string()))?;
    let tcp = TcpStream::connect(&target.upstream)
        .await
        .map_err(|source| UpstreamError::Connect {
            addr: target.upstream.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match (&p.tls, target.upstream_tls) {
        (Some(cfg), mode) if mode != UpstreamTls::Disable => {
            start_tls(tcp, Arc::clone(cfg), &target.upstream_server_name).await?
        }
        _ => Stream::Plain(tcp),
    };

    let mut params = vec![
        ("user".to_owned(), target.user.clone()),
        ("database".to_owned(), target.database.clone()),
    ];
    params.extend(p.client_params);
    let mut out = BytesMut::new();
    StartupPacket::Startup { minor: 0, params }.encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramClient> = None;
    let mut startup_frames = BytesMut::new();
    let mut key: Option<(i32, Bytes)> = None;
    loop {
        let (tag, body) = read_frame(&mut stream, &mut buf, p.max_message).await?;
        let msg = Backend::decode(tag, body.clone())
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        match msg {
            Backend::Authentication(auth) => {
                let reply = match auth {
                    Authentication::Ok => None,
                    Authentication::CleartextPassword => {
                        if target.upstream_tls == UpstreamTls::Disable && !is_loopback(&target.upstream) {
                            return Err(UpstreamError::Auth(
                                "upstream asks for a cleartext password over an unencrypted connection; enable upstream_tls".into(),
                            ));
                        }
                        let mut pw = password.clone().into_bytes();
                        pw.push(0);
                        Some(pw)
                    }
                    Authentication::Md5Password { salt } => {
                        let mut pw = md5_password(target.user.as_bytes(), password.as_bytes(), salt);
                        pw.push(0);
                        Some(pw)
                    }
                    Authentication::Sasl { mechanisms } => {
                        if !mechanisms.iter().any(|m| m.as_ref() == b"SCRAM-SHA-256") {
                            return Err(UpstreamError::Auth("upstream offers no SASL mechanism Weir speaks (SCRAM-SHA-256)".into()));
                        }
                        let client = ScramClient::new(password.as_bytes(), &nonce());
                        let first = client.client_first();
                        scram = Some(client);
                        let mut body = b"SCRAM-SHA-256\0".to_vec();
                        body.extend_from_slice(&i32::try_from(first.len()).unwrap_or(0).to_be_bytes());
                        body.extend_from_slice(&first);
                        Some(body)
                    }
                    Authentication::SaslContinue(data) => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| UpstreamError::Protocol("SASL continue before start".into()))?;
                        Some(client.client_final(&data).map_err(|e| UpstreamError::Auth(e.to_string()))?)
                    }
                    Authentication::SaslFinal(data) => {
                        let client = scram
                            .as_ref()
                            .ok_or_else(|| UpstreamError::Protocol("SASL final before start".into()))?;
                        client.verify_final(&data).map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        None
                    }
                    Authentication::Other { code, .. } => {
                        return Err(UpstreamError::Auth(format!(
                            "upstream asks for authentication method {code}, which Weir does not support (use scram-sha-256, md5 or trust)"
                        )))
                    }
                };
                if let Some(body) = reply {
                    let mut out = BytesMut::new();
                    Frontend::Password(Bytes::from(body)).encode(&mut out);
                    stream
                        .write_all(&out)
                        .await
                        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                }
            }
            Backend::ParameterStatus { .. } | Backend::NoticeResponse(_) => {
                Backend::decode(tag, body)
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?
                    .encode(&mut startup_frames);
            }
            Backend::BackendKeyData {
                process_id,
                secret_key,
            } => key = Some((process_id, secret_key)),
            Backend::NegotiateProtocolVersion { .. } => {}
            Backend::ReadyForQuery(_) => {
                let (process_id, secret_key) = key.unwrap_or((0, Bytes::new()));
                return Ok(Upstream {
                    stream,
                    leftover: buf,
                    startup_frames,
                    process_id,
                    secret_key,
                });
            }
            Backend::ErrorResponse(fields) => {
                // 28P01 / 28000 from the upstream means Weir's own credentials are wrong:
                // that is the operator's problem and its text names the upstream user, so it
                // is not passed to the client.
                return match fields.code() {
                    Some(c) if c.starts_with("28") => Err(UpstreamError::Auth(
                        String::from_utf8_lossy(
                            fields.get(b'M').map(|b| b.as_ref()).unwrap_or(b""),
                        )
                        .into_owned(),
                    )),
                    _ => Err(UpstreamError::Refused(fields)),
                };
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message '{}' during startup",
                    other.tag() as char
                )))
            }
        }
    }
}

async fn start_tls(
    mut tcp: TcpStream,
    cfg: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Stream, UpstreamError> {
    let mut out = BytesMut::new();
    StartupPacket::SslRequest.encode(&mut out);
    tcp.write_all(&out)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    if answer != b'S' {
        return Err(UpstreamError::Tls(
            "upstream does not accept TLS (answered SSLRequest with N)".into(),
        ));
    }
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| UpstreamError::Tls(format!("server name {server_name:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(Stream::Client(Box::new(tls)))
}

fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let host = host.trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn nonce() -> String {
    let mut raw = [0u8; 18];
    // Without randomness the nonce is predictable but the exchange still needs the password;
    // getrandom failing on Linux means the system is unusable anyway.
    let _ = getrandom::fill(&mut raw);
    base64::engine::general_purpose::STANDARD.encode(raw)
}
