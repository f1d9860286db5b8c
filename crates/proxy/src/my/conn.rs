//! One MySQL connection's packets: logical packets assembled from frames (bounded before
//! anything is allocated), and packets queued and written with Weir's own sequence ids.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_wire::mysql::{self, Header, MAX_FRAME_PAYLOAD};

use crate::stream::Stream;

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] mysql::MyError),
}

pub(crate) struct Conn {
    pub stream: Stream,
    buf: BytesMut,
    out: Vec<u8>,
    /// Largest logical packet accepted (`[gateway] max_message_size`).
    max: usize,
    /// The next sequence id this side writes.
    pub seq: u8,
    /// Counts what is written (`weir_relayed_bytes_total`): toward the client or upstream.
    written: &'static prometheus_client::metrics::counter::Counter,
}

impl Conn {
    /// A connection to a client; [`Conn::toward_upstream`] for one to a server.
    pub fn new(stream: Stream, max: usize) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            out: Vec::with_capacity(16 * 1024),
            max,
            seq: 0,
            written: &crate::metrics::get().bytes_to_client,
        }
    }

    pub fn toward_upstream(stream: Stream, max: usize) -> Conn {
        Conn {
            written: &crate::metrics::get().bytes_to_upstream,
            ..Conn::new(stream, max)
        }
    }

    /// Bytes read but not yet consumed (none may be left when the stream is upgraded to TLS).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    async fn fill(&mut self, n: usize) -> Result<(), ConnError> {
        while self.buf.len() < n {
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(64 * 1024);
            }
            let read = match self.stream.read_buf(&mut self.buf).await {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                other => other?,
            };
            if read == 0 {
                return Err(ConnError::Closed);
            }
        }
        Ok(())
    }

    /// Reads one logical packet; returns its payload. The next sequence id this side writes
    /// follows the last frame's.
    pub async fn read(&mut self) -> Result<Vec<u8>, ConnError> {
        let mut payload = Vec::new();
        loop {
            self.fill(4).await?;
            let mut h = [0u8; 4];
            h.copy_from_slice(self.buf.get(..4).unwrap_or(&[0; 4]));
            let header = Header::parse(h);
            let total = payload.len() + header.len;
            if total > self.max {
                return Err(mysql::MyError::TooLarge {
                    len: total,
                    max: self.max,
                }
                .into());
            }
            self.fill(4 + header.len).await?;
            self.buf.advance(4);
            payload.extend_from_slice(self.buf.get(..header.len).unwrap_or(&[]));
            self.buf.advance(header.len);
            self.seq = header.seq.wrapping_add(1);
            if !header.continues() {
                return Ok(payload);
            }
        }
    }

    /// Reads one single-frame packet without reading ahead: what follows it (a TLS
    /// ClientHello after an SSLRequest) stays in the socket for whoever reads next.
    pub async fn read_exact_packet(&mut self) -> Result<Vec<u8>, ConnError> {
        if !self.buf.is_empty() {
            return self.read().await;
        }
        let mut h = [0u8; 4];
        self.read_exact(&mut h).await?;
        let header = Header::parse(h);
        if header.continues() || header.len > self.max {
            return Err(mysql::MyError::Invalid("a handshake packet this long").into());
        }
        let mut payload = vec![0u8; header.len];
        self.read_exact(&mut payload).await?;
        self.seq = header.seq.wrapping_add(1);
        Ok(payload)
    }

    async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), ConnError> {
        match self.stream.read_exact(out).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ConnError::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the peer has closed the connection (used while nothing is expected from it).
    /// Bytes it sends meanwhile are kept for the next [`Conn::read`], up to the maximum.
    pub async fn closed(&mut self) {
        loop {
            if self.buf.len() > self.max + MAX_FRAME_PAYLOAD {
                std::future::pending::<()>().await;
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(16 * 1024);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Queues one packet with the next sequence id.
    pub fn queue(&mut self, payload: &[u8]) {
        self.seq = mysql::frame(self.seq, payload, &mut self.out);
    }

    pub fn queued(&self) -> usize {
        self.out.len()
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.written.inc_by(self.out.len() as u64);
            self.out.clear();
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Queues and writes one packet.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        self.queue(payload);
        self.flush().await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
