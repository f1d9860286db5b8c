//! The journal's frame format: `"WJ1\0"`, the payload's length (u32 LE), the first 8 bytes
//! of the payload's SHA-256, then the payload — one batch: its records (seq, ts, prev, hash,
//! body) and the checkpoint signed over the last. `"WJN\0"` marks that the trail continues in
//! the next segment; zeros end the data. Decoding is bounded by the bytes there are and
//! never panics (the `journal` fuzz target).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};
use weir_audit::chain::{Checkpoint, Record};

use crate::StoreError;

pub(super) const MAGIC: &[u8; 4] = b"WJ1\0";
pub(super) const NEXT: &[u8; 4] = b"WJN\0";
pub(super) const HEADER: u64 = 16;

/// One batch, as framed.
pub(super) fn encode(records: &[Record], cp: &Checkpoint) -> Vec<u8> {
    let body_bytes: usize = records.iter().map(|r| r.body.len() + 84).sum();
    let mut p = Vec::with_capacity(HEADER as usize + 4 + body_bytes + 112);
    p.extend_from_slice(&[0; HEADER as usize]);
    p.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        p.extend_from_slice(&r.seq.to_le_bytes());
        p.extend_from_slice(&r.ts_us.to_le_bytes());
        p.extend_from_slice(&r.prev);
        p.extend_from_slice(&r.hash);
        p.extend_from_slice(&(r.body.len() as u32).to_le_bytes());
        p.extend_from_slice(r.body.as_bytes());
    }
    p.extend_from_slice(&cp.seq.to_le_bytes());
    p.extend_from_slice(&cp.head);
    p.extend_from_slice(&cp.ts_us.to_le_bytes());
    p.extend_from_slice(&cp.signature);
    let len = (p.len() as u64 - HEADER) as u32;
    let sum = Sha256::digest(p.get(HEADER as usize..).unwrap_or(&[]));
    let header = MAGIC
        .iter()
        .copied()
        .chain(len.to_le_bytes())
        .chain(sum.iter().copied().take(8));
    for (d, s) in p.iter_mut().zip(header) {
        *d = s;
    }
    p
}

/// Reads a payload back; `None` for anything malformed.
fn decode(payload: &[u8]) -> Option<(Vec<Record>, Checkpoint)> {
    let mut c = Cursor(payload);
    let n = c.u32()?;
    let mut records = Vec::with_capacity(n.min(4096) as usize);
    for _ in 0..n {
        let seq = c.u64()?;
        let ts_us = c.i64()?;
        let prev = c.array::<32>()?;
        let hash = c.array::<32>()?;
        let len = c.u32()? as usize;
        let body = String::from_utf8(c.take(len)?.to_vec()).ok()?;
        records.push(Record {
            seq,
            ts_us,
            prev,
            hash,
            body,
        });
    }
    let cp = Checkpoint {
        seq: c.u64()?,
        head: c.array::<32>()?,
        ts_us: c.i64()?,
        signature: c.array::<64>()?,
    };
    c.0.is_empty().then_some((records, cp))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }
}

/// What one position in a segment holds.
pub(super) enum Slot {
    Frame(Vec<Record>, Checkpoint, u64),
    Next,
    End,
}

/// Where frames are read from: a segment file, or (for tests and fuzzing) its bytes.
pub(super) trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .get(start..)
            .and_then(|rest| rest.get(..buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The batches a segment's bytes hold, read as the journal reads a segment file: up to the
/// first torn, malformed or empty frame, or the continuation marker.
pub fn decode_segment(bytes: &[u8]) -> Vec<(Vec<Record>, Checkpoint)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Slot::Frame(records, cp, len)) = read_slot(bytes, bytes.len() as u64, at) {
        out.push((records, cp));
        at += len;
    }
    out
}

pub(super) fn read_slot<R: ReadAt + ?Sized>(
    file: &R,
    size: u64,
    at: u64,
) -> Result<Slot, StoreError> {
    let mut header = [0u8; HEADER as usize];
    if at + HEADER > size || file.read_exact_at(&mut header, at).is_err() {
        return Ok(Slot::End);
    }
    if header.starts_with(NEXT) {
        return Ok(Slot::Next);
    }
    if !header.starts_with(MAGIC) {
        return Ok(Slot::End);
    }
    let [_, _, _, _, a, b, c, d, ..] = header;
    let len = u64::from(u32::from_le_bytes([a, b, c, d]));
    if at + HEADER + len > size {
        return Ok(Slot::End);
    }
    let mut payload = vec![0u8; len as usize];
    if file.read_exact_at(&mut payload, at + HEADER).is_err() {
        return Ok(Slot::End);
    }
    if Sha256::digest(&payload).get(..8) != header.get(8..16) {
        // Torn by a crash mid-write: never acknowledged, and where the next append goes.
        return Ok(Slot::End);
    }
    match decode(&payload) {
        Some((records, cp)) => Ok(Slot::Frame(records, cp, HEADER + len)),
        None => Ok(Slot::End),
    }
}
