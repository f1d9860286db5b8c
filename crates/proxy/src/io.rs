//! Reading whole frames from a stream, with the length checked before anything is allocated.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use weir_wire::{Header, WireError};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
}

/// Reads one tagged frame; returns its tag and body. Bytes after it stay in `buf`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, Bytes), FrameError> {
    loop {
        if let Some(h) = Header::parse(buf, max)? {
            if buf.len() >= h.frame_len() {
                let frame = buf.split_to(h.frame_len()).freeze();
                return Ok((h.tag, frame.slice(Header::SIZE..)));
            }
            buf.reserve(h.frame_len() - buf.len());
        }
        if r.read_buf(buf).await? == 0 {
            return Err(FrameError::Closed);
        }
    }
}
