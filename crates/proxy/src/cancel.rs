//! Cancel requests. Weir gives every client its own (process id, secret) pair and maps it to
//! the upstream's, so a client never learns the upstream's key and cannot cancel anyone else's
//! query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_wire::startup::StartupPacket;

use crate::approvals::CancelSignal;

#[derive(Debug, Clone)]
pub struct UpstreamKey {
    /// `host:port` of the upstream that holds the session.
    pub addr: String,
    pub process_id: i32,
    pub secret_key: Bytes,
}

struct Entry {
    secret: [u8; 4],
    upstream: UpstreamKey,
    /// Fired with every matching cancel: a statement waiting for approval has not reached
    /// the upstream, so only Weir can cancel it.
    signal: Arc<CancelSignal>,
}

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<Maps>,
}

#[derive(Default)]
struct Maps {
    by_pid: HashMap<i32, Entry>,
    /// (upstream address, upstream pid) → Weir's pid, to translate the sender of a
    /// NotificationResponse into the pid its receivers know.
    by_upstream: HashMap<(String, i32), i32>,
}

impl CancelRegistry {
    /// Issues a fresh key for a session; returns (process id, secret).
    pub fn register(&self, upstream: UpstreamKey, signal: Arc<CancelSignal>) -> (i32, [u8; 4]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mut raw = [0u8; 8];
            if getrandom::fill(&mut raw).is_err() {
                // No randomness means no unguessable key: fall back to a counter-like value
                // but keep the secret zeroed, which no cancel will match (see `lookup`).
                raw = [0; 8];
            }
            let [a, b, c, d, e, f, g, h] = raw;
            let pid = i32::from_be_bytes([a & 0x7f, b, c, d]).max(1);
            if map.by_pid.contains_key(&pid) {
                continue;
            }
            let secret = [e, f, g, h];
            map.by_upstream
                .insert((upstream.addr.clone(), upstream.process_id), pid);
            map.by_pid.insert(
                pid,
                Entry {
                    secret,
                    upstream,
                    signal,
                },
            );
            return (pid, secret);
        }
    }

    pub fn unregister(&self, pid: i32) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.by_pid.remove(&pid) {
            map.by_upstream
                .remove(&(e.upstream.addr, e.upstream.process_id));
        }
    }

    /// Weir's pid for a session of `addr` whose upstream pid is `upstream_pid`.
    pub fn weir_pid(&self, addr: &str, upstream_pid: i32) -> Option<i32> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.by_upstream
            .get(&(addr.to_owned(), upstream_pid))
            .copied()
    }

    /// The session a cancel request names, if its secret matches: its upstream key and its
    /// cancel signal.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<(UpstreamKey, Arc<CancelSignal>)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.by_pid.get(&pid)?;
        if entry.secret == [0; 4] || secret.len() != 4 {
            return None;
        }
        let diff = entry
            .secret
            .iter()
            .zip(secret.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        (diff == 0).then(|| (entry.upstream.clone(), Arc::clone(&entry.signal)))
    }
}

/// Sends a CancelRequest for `key` to its upstream. Like libpq, on a fresh plain connection.
pub async fn send_cancel(key: &UpstreamKey) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(&key.addr).await?;
    let mut out = BytesMut::new();
    StartupPacket::Cancel {
        process_id: key.process_id,
        secret_key: key.secret_key.clone(),
    }
    .encode(&mut out);
    stream.write_all(&out).await?;
    // The server closes the connection once it has signalled the backend. Waiting for that
    // before the client's cancel connection is closed keeps libpq's PQcancel synchronous
    // through Weir, as it is against the server directly: otherwise the client's next query
    // could overtake the cancel and be the one cancelled.
    let mut byte = [0u8; 1];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut byte)).await;
    Ok(())
}
