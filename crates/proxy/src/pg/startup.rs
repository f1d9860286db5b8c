//! Startup: TLS, cancel requests and the startup packet; authentication of the Weir
//! identity; the upstream connection and the checks of what it reports.

use super::*;

/// Reads the first packet(s): TLS negotiation, cancel requests, then the startup message.
pub(super) async fn startup(
    client: &mut Stream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    session: u64,
    shared: &Arc<Shared>,
    channel: Channel,
) -> Result<(), Fatal> {
    // One deadline for the whole of startup and authentication, however many packets the
    // client sends on the way.
    let deadline = tokio::time::Instant::now() + shared.config.gateway.connect_timeout;
    let mut gss_refused = false;
    loop {
        let packet = tokio::time::timeout_at(deadline, read_startup(client, buf))
            .await
            .map_err(|_| Fatal::new("08006", "weir: startup timed out"))??;
        match packet {
            StartupPacket::SslRequest => {
                if client.is_tls() {
                    return Err(Fatal::protocol("SSLRequest inside TLS"));
                }
                // Bytes after SSLRequest and before the handshake would be read as if they
                // came over TLS (CVE-2021-23214): refuse them.
                if !buf.is_empty() {
                    return Err(Fatal::protocol("unexpected data after SSLRequest"));
                }
                let Stream::Plain(mut tcp) = std::mem::replace(client, Stream::Closed) else {
                    return Err(Fatal::protocol("TLS state"));
                };
                tcp.write_all(b"S").await.map_err(Fatal::protocol)?;
                let tls = tokio::time::timeout_at(deadline, shared.front.tls_acceptor.accept(tcp))
                    .await
                    .map_err(|_| Fatal::new("08006", "weir: TLS handshake timed out"))?
                    .map_err(|e| Fatal::new("08006", format!("weir: TLS handshake failed: {e}")))?;
                *client = Stream::Server(Box::new(tls));
            }
            StartupPacket::GssEncRequest => {
                if gss_refused {
                    return Err(Fatal::protocol("a second GSSENCRequest"));
                }
                gss_refused = true;
                if !buf.is_empty() {
                    return Err(Fatal::protocol("unexpected data after GSSENCRequest"));
                }
                client.write_all(b"N").await.map_err(Fatal::protocol)?;
            }
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                if let Some((key, signal)) = shared.front.cancels.lookup(process_id, &secret_key) {
                    signal.fire();
                    if let Err(e) = crate::cancel::send_cancel(&key).await {
                        warn!(cause = %e, "could not forward a cancel request");
                    }
                }
                // A cancel request gets no answer, whatever happened.
                let _ = client.shutdown().await;
                return Ok(());
            }
            startup @ StartupPacket::Startup { .. } => {
                return authenticate(
                    client, buf, startup, peer, session, shared, deadline, channel,
                )
                .await;
            }
        }
    }
}

async fn read_startup(client: &mut Stream, buf: &mut BytesMut) -> Result<StartupPacket, Fatal> {
    loop {
        if let Some(len) = StartupPacket::frame_len(buf).map_err(Fatal::protocol)? {
            if buf.len() >= len {
                let frame = buf.split_to(len).freeze();
                return StartupPacket::decode(frame).map_err(Fatal::protocol);
            }
            buf.reserve(len - buf.len());
        }
        let n = client.read_buf(buf).await.map_err(Fatal::protocol)?;
        if n == 0 {
            return Err(Fatal::protocol("connection closed during startup"));
        }
    }
}

/// Startup parameters a client may pass on to the upstream. Everything else is dropped or,
/// for `options` and `replication`, refused: settings given there would bypass policy.
fn forwardable(name: &str) -> bool {
    matches!(
        name,
        "application_name"
            | "client_encoding"
            | "DateStyle"
            | "datestyle"
            | "TimeZone"
            | "timezone"
            | "IntervalStyle"
            | "intervalstyle"
            | "extra_float_digits"
            | "search_path"
            | "lc_messages"
            | "lc_monetary"
            | "lc_numeric"
            | "lc_time"
            | "bytea_output"
            | "standard_conforming_strings"
            | "statement_timeout"
            | "lock_timeout"
            | "idle_in_transaction_session_timeout"
            | "geqo"
    )
}

#[allow(clippy::too_many_arguments)]
async fn authenticate(
    client: &mut Stream,
    buf: &mut BytesMut,
    startup: StartupPacket,
    peer: SocketAddr,
    session: u64,
    shared: &Arc<Shared>,
    deadline: tokio::time::Instant,
    channel: Channel,
) -> Result<(), Fatal> {
    let StartupPacket::Startup { minor, params } = &startup else {
        return Err(Fatal::protocol("expected a startup message"));
    };
    let user = startup
        .param("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Fatal::new(
                "28000",
                "weir: no user name given: connect with user=<identity>",
            )
        })?
        .to_owned();
    let database = startup.param("database").unwrap_or(&user).to_owned();
    if startup
        .param("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(Fatal::new(
            "42501",
            "weir: denied by weir.protocol.replication: replication connections bypass statement policy",
        ));
    }
    if startup
        .param("options")
        .is_some_and(|o| !o.trim().is_empty())
    {
        return Err(Fatal::new(
            "0A000",
            "weir: the startup parameter \"options\" is not accepted: settings given there would bypass policy; use SET after connecting",
        ));
    }
    let target = shared
        .config
        .target(&database)
        .cloned()
        .ok_or_else(|| Fatal::new("3D000", format!("weir: no target named \"{database}\"")))?;
    if target.engine != weir_config::Engine::Postgres {
        return Err(Fatal::new(
            "0A000",
            format!("weir: target \"{database}\" is not a PostgreSQL target"),
        ));
    }
    // The token is a bearer secret: never accept it in clear over a network.
    if !client.is_private() && !peer.ip().is_loopback() {
        return Err(Fatal::new(
            "28000",
            "weir: connections from other hosts must use TLS (sslmode=require)",
        ));
    }

    let mut out = BytesMut::new();
    Backend::Authentication(Authentication::CleartextPassword).encode(&mut out);
    client.write_all(&out).await.map_err(Fatal::protocol)?;
    let (tag, body) = tokio::time::timeout_at(
        deadline,
        read_frame(client, buf, weir_wire::MAX_STARTUP_PACKET_SIZE),
    )
    .await
    .map_err(|_| Fatal::new("08006", "weir: authentication timed out"))??;
    if tag != b'p' {
        return Err(Fatal::protocol("expected a password message"));
    }
    let token = body.strip_suffix(&[0]).unwrap_or(&body);
    let (identity, token_id) = match shared.auth.verify(&user, token).await {
        Ok(verified) => verified,
        Err(e) => {
            pipeline::login_failed(shared, peer, &user, &database, &e).await;
            return Err(Fatal::new(
                "28P01",
                format!("weir: authentication failed for \"{user}\": the password must be a valid Weir token or ID token for this identity"),
            ));
        }
    };
    // From here on every log line of the session names who and where (the JSON log
    // carries the span's fields).
    tracing::Span::current()
        .record("identity", identity.name.as_str())
        .record("target", target.name.as_str());

    // An agent acting for a person is decided for that person too.
    let (person, person_token) = match &identity.on_behalf_of {
        Some(name) => match shared.auth.person(name) {
            Ok((p, token)) => (Some(p), token),
            Err(e) => {
                return Err(Fatal::new(
                    "28P01",
                    format!("weir: authentication failed for \"{user}\": {e}"),
                ))
            }
        },
        None => (None, None),
    };

    // INVARIANT: the session starts in the lexing mode Weir analyzes in
    // (`weir_analyze::lexing`): the client may not choose another, and
    // standard_conforming_strings is always sent as `on`, so neither a role's or database's
    // default nor a later RESET or DISCARD ALL can return to another.
    for (k, v) in params.iter().filter(|(k, _)| forwardable(k)) {
        if let Err(why) = weir_analyze::lexing::check_setting(k, Some(v)) {
            return Err(Fatal::new(
                "22023",
                format!("weir: denied by {}: {why}", weir_analyze::lexing::RULE),
            ));
        }
    }
    let mut client_params: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| forwardable(k) && k != "standard_conforming_strings")
        .cloned()
        .collect();
    client_params.push(("standard_conforming_strings".into(), "on".into()));
    if channel == Channel::Mcp {
        // A tool call's statement ends by itself: the agent cannot cancel it.
        let ms = shared.config.mcp.statement_timeout.as_millis().max(1);
        client_params.retain(|(k, _)| k != "statement_timeout");
        client_params.push(("statement_timeout".into(), ms.to_string()));
    }
    let tls_cfg = shared.upstreams.tls.get(&target.name).cloned().flatten();
    let upstream = upstream::connect(upstream::ConnectParams {
        target: &target,
        tls: tls_cfg,
        client_params,
        max_message: shared.config.gateway.max_message_size,
        timeout: shared.config.gateway.connect_timeout,
    })
    .await
    .inspect_err(|_| crate::metrics::upstream_connect_failed(&target.name))
    .map_err(|e| match e {
        UpstreamError::Refused(fields) => {
            let code = fields.code().unwrap_or("08006").to_owned();
            let msg = fields
                .get(b'M')
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            warn!(target = %target.name, code = %code, message = %msg, "upstream refused the session");
            Fatal {
                code: static_code(&code),
                message: format!("weir: upstream of target \"{}\": {msg}", target.name),
            }
        }
        other => {
            warn!(target = %target.name, cause = %other, "cannot open the upstream session");
            Fatal::new(
                "08006",
                format!("weir: cannot connect to target \"{}\"; the gateway log has the cause", target.name),
            )
        }
    })?;

    if let Some(why) = lexing_refusal(&upstream.startup_frames) {
        warn!(target = %target.name, reason = %why, "upstream session is not in a lexing mode Weir reads");
        return Err(Fatal::new(
            "22023",
            format!("weir: denied by {}: the target's session reports {why}; connect with client_encoding=UTF8", weir_analyze::lexing::RULE),
        ));
    }
    let key = UpstreamKey {
        addr: target.upstream.clone(),
        process_id: upstream.process_id,
        secret_key: upstream.secret_key.clone(),
    };
    let cancel = Arc::new(CancelSignal::default());
    let (pid, secret) = shared.front.cancels.register(key, Arc::clone(&cancel));
    let end = Arc::new(crate::grants::SessionEnd::default());
    if let Some(id) = token_id {
        shared.grants.token_session(id, session, &end);
    }
    // An agent acting for a person stops when the token that vouches for them is revoked.
    if let Some(id) = person_token {
        shared.grants.depend_on_token(id, session, &end);
    }
    let result = serve(
        client, buf, upstream, *minor, params, pid, secret, identity, target, peer, session,
        shared, cancel, end, channel, person,
    )
    .await;
    shared.front.cancels.unregister(pid);
    result
}

/// The first ParameterStatus among `frames` that reports a lexing mode Weir does not analyze
/// in (`weir_analyze::lexing`), described.
fn lexing_refusal(frames: &[u8]) -> Option<String> {
    let mut rest = frames;
    while let Ok(Some(h)) = Header::parse(rest, usize::MAX) {
        let frame = rest.get(..h.frame_len())?;
        if h.tag == b'S' {
            if let Some(why) = reported_lexing_refusal(frame.get(Header::SIZE..)?) {
                return Some(why);
            }
        }
        rest = rest.get(h.frame_len()..)?;
    }
    None
}

/// A ParameterStatus body that reports a lexing mode Weir does not analyze in, described.
pub(super) fn reported_lexing_refusal(body: &[u8]) -> Option<String> {
    let Ok(Backend::ParameterStatus { name, value }) =
        Backend::decode(b'S', Bytes::copy_from_slice(body))
    else {
        return None;
    };
    let name = String::from_utf8_lossy(&name);
    let value = String::from_utf8_lossy(&value);
    weir_analyze::lexing::check_reported(&name, &value)
        .err()
        .map(|why| format!("{name} = {value} ({why})"))
}

/// SQLSTATEs are five ASCII characters; keep the ones the upstream sends that clients act on.
fn static_code(code: &str) -> &'static str {
    match code {
        "53300" => "53300",
        "3D000" => "3D000",
        "57P03" => "57P03",
        "53000" => "53000",
        _ => "08006",
    }
}
