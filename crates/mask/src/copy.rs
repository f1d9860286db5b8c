//! Masking `COPY … TO STDOUT`: the data rows of text, CSV and binary COPY.
//!
//! COPY has no RowDescription: which column is which comes from the statement (the table and
//! its column list, or the query's result columns) and the catalog. Each CopyData message is
//! parsed in place with the format's own rules (text escapes, CSV quoting, binary tuples)
//! and rewritten only when a value changes. A message that cannot be parsed is not
//! forwarded as it is: its values are replaced by NULLs (text, CSV) or the message is
//! dropped (binary), which breaks that COPY for the client but shows it nothing.

use bytes::{BufMut, BytesMut};
use weir_analyze::{CopyFormat, CopyKind};

use crate::classify::{self, Class};
use crate::strategy::{self, HashKey, Shape, Strategy};

/// What to do with one column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyAct {
    Keep,
    Scan,
    Mask(Strategy),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyField {
    pub act: CopyAct,
    pub shape: Shape,
}

/// How one COPY's data is rewritten.
#[derive(Debug, Clone)]
pub(crate) struct CopyPlan {
    kind: CopyKind,
    fields: Vec<CopyField>,
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: Vec<u8>,
    /// CSV with HEADER: the first row is column names.
    header_pending: bool,
    /// Binary: the file header is still to come.
    binary_header_pending: bool,
    /// Every value is replaced (the columns are unknown).
    blind: bool,
}

impl CopyPlan {
    /// `fields` is `None` when the columns cannot be told: every value is masked.
    pub(crate) fn new(format: &CopyFormat, fields: Option<Vec<CopyField>>) -> CopyPlan {
        let byte = |s: &Option<String>, default: u8| {
            s.as_deref()
                .map(str::as_bytes)
                .and_then(|b| match b {
                    [one] => Some(*one),
                    _ => None,
                })
                .unwrap_or(default)
        };
        let csv = format.kind == CopyKind::Csv;
        let quote = byte(&format.quote, b'"');
        // A multi-byte delimiter is refused by PostgreSQL; were it accepted, Weir could not
        // split the data, so it would mask blind.
        let multi = format.delimiter.as_ref().is_some_and(|d| d.len() != 1);
        CopyPlan {
            kind: format.kind,
            blind: fields.is_none() || multi,
            fields: fields.unwrap_or_default(),
            delimiter: byte(&format.delimiter, if csv { b',' } else { b'\t' }),
            quote,
            escape: byte(&format.escape, quote),
            null: format
                .null
                .clone()
                .map(String::into_bytes)
                .unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() }),
            header_pending: csv && format.header,
            binary_header_pending: format.kind == CopyKind::Binary,
        }
    }

    /// Whether no value can change: the data passes untouched.
    pub(crate) fn passes_through(&self) -> bool {
        !self.blind && self.fields.iter().all(|f| f.act == CopyAct::Keep)
    }

    /// Rewrites one CopyData body; `None` keeps it. `hits` receives the classes found by
    /// content.
    pub(crate) fn rewrite(
        &mut self,
        body: &[u8],
        key: &HashKey,
        hits: &mut Vec<Class>,
    ) -> Option<BytesMut> {
        if self.passes_through() && self.kind != CopyKind::Binary {
            return None;
        }
        match self.kind {
            CopyKind::Text => self.text(body, key, hits),
            CopyKind::Csv => {
                if std::mem::take(&mut self.header_pending) {
                    return None;
                }
                self.csv(body, key, hits)
            }
            CopyKind::Binary => self.binary(body, key, hits),
        }
    }

    fn act(&self, i: usize) -> (CopyAct, Shape) {
        if self.blind {
            return (CopyAct::Mask(Strategy::Null), Shape::Other);
        }
        self.fields
            .get(i)
            .map(|f| (f.act, f.shape))
            // More values than columns: nothing known about them.
            .unwrap_or((CopyAct::Mask(Strategy::Null), Shape::Other))
    }

    /// The replacement of one value, or `None` to keep it; `Some(None)` is NULL.
    fn decide(
        &self,
        i: usize,
        value: &[u8],
        key: &HashKey,
        hits: &mut Vec<Class>,
    ) -> Option<Option<Vec<u8>>> {
        let (act, shape) = self.act(i);
        let strategy = match act {
            CopyAct::Keep => return None,
            CopyAct::Mask(s) => s,
            CopyAct::Scan => {
                let c = classify::by_content(value)?;
                hits.push(c);
                match c {
                    Class::Email => Strategy::Email,
                    Class::Card | Class::Iban | Class::Phone => Strategy::Partial,
                    _ => Strategy::Redact,
                }
            }
        };
        // Text and CSV carry every type as text, but only text-like columns take the
        // strategy; others become NULL (a masked date is no date).
        let mut out = Vec::new();
        let format = if self.kind == CopyKind::Binary { 1 } else { 0 };
        Some(strategy::mask_into(strategy, shape, format, value, key, &mut out).then_some(out))
    }

    fn text(&self, body: &[u8], key: &HashKey, hits: &mut Vec<Class>) -> Option<BytesMut> {
        let mut out = BytesMut::with_capacity(body.len() + 16);
        let mut changed = false;
        for line in body.split_inclusive(|&b| b == b'\n') {
            let (line, eol) = match line.strip_suffix(b"\n") {
                Some(l) => (l, &b"\n"[..]),
                None => (line, &b""[..]),
            };
            let mut i = 0;
            let mut start = 0;
            let mut pos = 0;
            let mut first = true;
            let mut emit = |field: &[u8], i: usize, out: &mut BytesMut, first: &mut bool| {
                if !*first {
                    out.put_u8(self.delimiter);
                }
                *first = false;
                if field == self.null.as_slice() {
                    out.put_slice(field);
                    return;
                }
                let raw = unescape_text(field);
                match self.decide(i, &raw, key, hits) {
                    None => out.put_slice(field),
                    Some(None) => {
                        changed = true;
                        out.put_slice(&self.null);
                    }
                    Some(Some(v)) => {
                        changed = true;
                        escape_text(&v, self.delimiter, out);
                    }
                }
            };
            while pos < line.len() {
                match line.get(pos) {
                    Some(b'\\') => pos += 2,
                    Some(&b) if b == self.delimiter => {
                        emit(line.get(start..pos).unwrap_or(&[]), i, &mut out, &mut first);
                        i += 1;
                        pos += 1;
                        start = pos;
                    }
                    _ => pos += 1,
                }
            }
            emit(line.get(start..).unwrap_or(&[]), i, &mut out, &mut first);
            out.put_slice(eol);
        }
        changed.then_some(out)
    }

    fn csv(&self, body: &[u8], key: &HashKey, hits: &mut Vec<Class>) -> Option<BytesMut> {
        let mut out = BytesMut::with_capacity(body.len() + 16);
        let mut changed = false;
        let mut i = 0;
        let mut pos = 0;
        let len = body.len();
        loop {
            // One field: quoted or not.
            let mut value = Vec::new();
            let mut quoted = false;
            let start = pos;
            if body.get(pos) == Some(&self.quote) {
                quoted = true;
                pos += 1;
                loop {
                    match body.get(pos) {
                        None => return Some(self.blind_line(i + 1)),
                        Some(&b) if b == self.escape && self.escape != self.quote => {
                            if let Some(&n) = body.get(pos + 1) {
                                value.push(n);
                            }
                            pos += 2;
                        }
                        Some(&b) if b == self.quote => {
                            if body.get(pos + 1) == Some(&self.quote) && self.escape == self.quote {
                                value.push(b);
                                pos += 2;
                            } else {
                                pos += 1;
                                break;
                            }
                        }
                        Some(&b) => {
                            value.push(b);
                            pos += 1;
                        }
                    }
                }
            } else {
                while let Some(&b) = body.get(pos) {
                    if b == self.delimiter || b == b'\n' || b == b'\r' {
                        break;
                    }
                    value.push(b);
                    pos += 1;
                }
            }
            let raw = body.get(start..pos).unwrap_or(&[]);
            if !quoted && raw == self.null.as_slice() {
                out.put_slice(raw);
            } else {
                match self.decide(i, &value, key, hits) {
                    None => out.put_slice(raw),
                    Some(None) => {
                        changed = true;
                        out.put_slice(&self.null);
                    }
                    Some(Some(v)) => {
                        changed = true;
                        out.put_u8(self.quote);
                        for b in v {
                            if b == self.quote || b == self.escape {
                                out.put_u8(self.escape);
                            }
                            out.put_u8(b);
                        }
                        out.put_u8(self.quote);
                    }
                }
            }
            match body.get(pos) {
                Some(&b) if b == self.delimiter => {
                    out.put_u8(b);
                    pos += 1;
                    i += 1;
                }
                _ => {
                    // End of the row: the line ending, as sent.
                    out.put_slice(body.get(pos..len).unwrap_or(&[]));
                    break;
                }
            }
        }
        changed.then_some(out)
    }

    /// A CSV or text row of `n` NULLs.
    fn blind_line(&self, n: usize) -> BytesMut {
        let mut out = BytesMut::new();
        for k in 0..n.max(1) {
            if k > 0 {
                out.put_u8(self.delimiter);
            }
            out.put_slice(&self.null);
        }
        out.put_u8(b'\n');
        out
    }

    fn binary(&mut self, body: &[u8], key: &HashKey, hits: &mut Vec<Class>) -> Option<BytesMut> {
        const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
        let mut out = BytesMut::with_capacity(body.len() + 16);
        let mut rest = body;
        if self.binary_header_pending {
            let Some(after) = rest.strip_prefix(SIGNATURE) else {
                return Some(BytesMut::new());
            };
            // Flags (4 bytes), then the header extension's length and the extension.
            let Some(ext_len) = after
                .get(4..8)
                .and_then(|e| <[u8; 4]>::try_from(e).ok())
                .map(u32::from_be_bytes)
                .and_then(|n| usize::try_from(n).ok())
            else {
                return Some(BytesMut::new());
            };
            let Some(header) = (SIGNATURE.len() + 8)
                .checked_add(ext_len)
                .and_then(|n| body.get(..n))
            else {
                return Some(BytesMut::new());
            };
            out.put_slice(header);
            rest = body.get(header.len()..).unwrap_or(&[]);
            self.binary_header_pending = false;
        }
        let mut changed = false;
        while !rest.is_empty() {
            let Some((count, after)) = rest.split_first_chunk::<2>() else {
                return Some(BytesMut::new());
            };
            let count = i16::from_be_bytes(*count);
            out.put_i16(count);
            rest = after;
            if count < 0 {
                // The trailer.
                out.put_slice(rest);
                break;
            }
            for i in 0..usize::try_from(count).unwrap_or(0) {
                let Some((len, after)) = rest.split_first_chunk::<4>() else {
                    return Some(BytesMut::new());
                };
                let len = i32::from_be_bytes(*len);
                rest = after;
                if len < 0 {
                    out.put_i32(-1);
                    continue;
                }
                let n = usize::try_from(len).unwrap_or(usize::MAX);
                let (Some(value), Some(after)) = (rest.get(..n), rest.get(n..)) else {
                    return Some(BytesMut::new());
                };
                rest = after;
                match self.decide(i, value, key, hits) {
                    None => {
                        out.put_i32(len);
                        out.put_slice(value);
                    }
                    Some(None) => {
                        changed = true;
                        out.put_i32(-1);
                    }
                    Some(Some(v)) => {
                        changed = true;
                        out.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                        out.put_slice(&v);
                    }
                }
            }
        }
        changed.then_some(out)
    }
}

/// A text-format COPY value without its backslash escapes.
fn unescape_text(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut it = field.iter().copied();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'b') => out.push(8),
            Some(b'f') => out.push(12),
            Some(b'v') => out.push(11),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn escape_text(v: &[u8], delimiter: u8, out: &mut BytesMut) {
    for &b in v {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\t' => out.put_slice(b"\\t"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b if b == delimiter => {
                out.put_u8(b'\\');
                out.put_u8(b);
            }
            b => out.put_u8(b),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn plan(kind: CopyKind, acts: &[CopyAct]) -> CopyPlan {
        let format = CopyFormat {
            kind,
            delimiter: None,
            quote: None,
            escape: None,
            null: None,
            header: false,
        };
        CopyPlan::new(
            &format,
            Some(
                acts.iter()
                    .map(|&act| CopyField {
                        act,
                        shape: Shape::Text,
                    })
                    .collect(),
            ),
        )
    }

    #[test]
    fn text_csv_and_binary_rows() {
        let key = HashKey::new(b"k");
        let mut hits = Vec::new();
        let mut p = plan(
            CopyKind::Text,
            &[
                CopyAct::Keep,
                CopyAct::Mask(Strategy::Redact),
                CopyAct::Scan,
            ],
        );
        let out = p
            .rewrite(b"1\tsecret\\tvalue\tcall a@b.co\n", &key, &mut hits)
            .unwrap();
        assert_eq!(&out[..], b"1\t****\t****\n");
        assert_eq!(p.rewrite(b"2\t\\N\tnothing here\n", &key, &mut hits), None);

        let mut p = plan(
            CopyKind::Csv,
            &[CopyAct::Keep, CopyAct::Mask(Strategy::Partial)],
        );
        let out = p
            .rewrite(b"1,\"4111 1111, 1111 1111\"\n", &key, &mut hits)
            .unwrap();
        assert_eq!(&out[..], b"1,\"**** ****, **** 1111\"\n");
        assert_eq!(p.rewrite(b"2,\n", &key, &mut hits), None, "NULL stays NULL");

        let mut p = plan(
            CopyKind::Binary,
            &[CopyAct::Keep, CopyAct::Mask(Strategy::Redact)],
        );
        let mut data = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        data.extend_from_slice(&[0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 3, b'a', b'b', b'c']);
        let out = p.rewrite(&data, &key, &mut hits).unwrap();
        assert_eq!(
            &out[19..],
            &[0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 4, b'*', b'*', b'*', b'*']
        );
        assert_eq!(&out[..19], &data[..19]);
        let trailer = p.rewrite(&[0xff, 0xff], &key, &mut hits);
        assert_eq!(trailer, None);
        // Truncated: dropped, never forwarded.
        assert_eq!(p.rewrite(&[0, 2, 0, 0], &key, &mut hits).unwrap().len(), 0);
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod blind_tests {
    use super::*;
    #[test]
    fn blind_text_keeps_delimiters() {
        let format = CopyFormat {
            kind: CopyKind::Text,
            delimiter: None,
            quote: None,
            escape: None,
            null: None,
            header: false,
        };
        let mut p = CopyPlan::new(&format, None);
        let out = p
            .rewrite(b"1\tx\ty\n", &HashKey::new(b"k"), &mut Vec::new())
            .unwrap();
        assert_eq!(&out[..], b"\\N\t\\N\t\\N\n");
    }
}
