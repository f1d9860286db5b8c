//! Masking strategies, and how a masked value stays valid for its column's type and format.
//!
//! A client parses each value by the type and format its RowDescription announced, so a
//! masked value must parse as that type: a `text` column can hold `****`, an `int4` column
//! cannot. Text-like types (text, varchar, char, name, unknown) take every strategy; `json` and
//! `jsonb` take them as a JSON string; every other type (numbers, dates, uuid, bytea, arrays,
//! types Weir does not know) gets SQL NULL, the one value valid for every type.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How a sensitive value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// `****`.
    Redact,
    /// Everything but the last four characters hidden (`**** **** **** 1111`); separators
    /// stay, so the shape is recognisable.
    Partial,
    /// Still an address: first character of the local part, then `***@domain`.
    Email,
    /// A keyed hash (HMAC-SHA-256, 16 hex digits): equal values mask equally, so joins and
    /// GROUP BY on masked values still work, and without the key nobody can test a guess.
    Hash,
    /// SQL NULL.
    Null,
}

impl Strategy {
    /// The names used in `weir.toml` (`mask = "partial"`).
    pub fn parse(name: &str) -> Option<Strategy> {
        use weir_vocab::strategy as name_of;
        Some(match name {
            name_of::REDACT => Strategy::Redact,
            name_of::PARTIAL => Strategy::Partial,
            name_of::EMAIL => Strategy::Email,
            name_of::HASH => Strategy::Hash,
            name_of::NULL => Strategy::Null,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        use weir_vocab::strategy as name_of;
        match self {
            Strategy::Redact => name_of::REDACT,
            Strategy::Partial => name_of::PARTIAL,
            Strategy::Email => name_of::EMAIL,
            Strategy::Hash => name_of::HASH,
            Strategy::Null => name_of::NULL,
        }
    }
}

#[cfg(test)]
mod names {
    #[test]
    fn every_configurable_name_is_a_strategy_and_back() {
        for name in weir_vocab::strategy::ALL {
            let s = super::Strategy::parse(name);
            assert_eq!(s.map(super::Strategy::as_str), Some(*name));
        }
    }
}

/// The key of [`Strategy::Hash`].
#[derive(Clone)]
pub struct HashKey(Vec<u8>);

impl HashKey {
    pub fn new(key: &[u8]) -> HashKey {
        HashKey(key.to_vec())
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// How values of a type can be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Text,
    Json,
    /// `jsonb`: in binary format a version byte (1) precedes the JSON text.
    Jsonb,
    /// Anything else: masked as NULL.
    Other,
}

impl Shape {
    pub fn of(type_oid: u32) -> Shape {
        match type_oid {
            // text, varchar, bpchar, name, unknown, "char"
            25 | 1043 | 1042 | 19 | 705 | 18 => Shape::Text,
            114 => Shape::Json,
            3802 => Shape::Jsonb,
            _ => Shape::Other,
        }
    }

    /// Whether content detection can read this type's values as text.
    pub fn is_textual(self) -> bool {
        !matches!(self, Shape::Other)
    }
}

/// Types whose values hold text without being text (Shape::Other): records, arrays of text
/// or JSON, xml, and any type made in the database (composites, domains, enums — OIDs from
/// 16384 on). Content detection scans them as a backstop; what it finds makes the value NULL,
/// since its text cannot keep the type's shape.
pub fn holds_text(type_oid: u32) -> bool {
    matches!(
        type_oid,
        // record, _record, xml, _xml, _text, _varchar, _bpchar, _name, _json, _jsonb
        2249 | 2287 | 142 | 143 | 1009 | 1015 | 1014 | 1003 | 199 | 3807
    ) || type_oid >= 16384
}

/// The text of `value` as content detection and the strategies see it: jsonb in binary
/// format without its version byte.
pub fn text_of(shape: Shape, format: i16, value: &[u8]) -> &[u8] {
    match (shape, format) {
        (Shape::Jsonb, 1) => value.get(1..).unwrap_or(&[]),
        _ => value,
    }
}

/// Masks one non-NULL value of a column of `shape` sent in `format` (0 text, 1 binary):
/// writes the replacement's bytes to `out` and returns true, or returns false for SQL NULL.
pub fn mask_into(
    strategy: Strategy,
    shape: Shape,
    format: i16,
    value: &[u8],
    key: &HashKey,
    out: &mut Vec<u8>,
) -> bool {
    if strategy == Strategy::Null || shape == Shape::Other || (format != 0 && format != 1) {
        return false;
    }
    let text = text_of(shape, format, value);
    match shape {
        Shape::Text => masked_text(strategy, text, key, out),
        Shape::Json | Shape::Jsonb => {
            if shape == Shape::Jsonb && format == 1 {
                out.push(1);
            }
            // A JSON value of any kind becomes a JSON string holding the masked text.
            let mut inner = Vec::new();
            masked_text(strategy, text, key, &mut inner);
            json_string(&inner, out);
        }
        Shape::Other => return false,
    }
    true
}

fn masked_text(strategy: Strategy, text: &[u8], key: &HashKey, out: &mut Vec<u8>) {
    match strategy {
        Strategy::Redact | Strategy::Null => out.extend_from_slice(b"****"),
        Strategy::Partial => partial(text, out),
        Strategy::Email => email(text, out),
        Strategy::Hash => {
            // HMAC takes keys of any length: this cannot fail, but if it did the value
            // would be redacted, never shown.
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key.0) else {
                out.extend_from_slice(b"****");
                return;
            };
            mac.update(text);
            let digest = mac.finalize().into_bytes();
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for &b in digest.iter().take(8) {
                out.extend(
                    [b >> 4, b & 15]
                        .iter()
                        .filter_map(|&n| HEX.get(usize::from(n)).copied()),
                );
            }
        }
    }
}

/// Keeps the last four letters or digits and every separator; the rest become `*`. A value
/// of four or fewer letters and digits is hidden whole.
fn partial(text: &[u8], out: &mut Vec<u8>) {
    if text.is_ascii() {
        // The common case, byte by byte.
        let significant = text.iter().filter(|b| b.is_ascii_alphanumeric()).count();
        let keep_from = if significant <= 4 {
            usize::MAX
        } else {
            significant - 4
        };
        let mut seen = 0usize;
        out.extend(text.iter().map(|&b| {
            if b.is_ascii_alphanumeric() {
                seen += 1;
                if seen > keep_from {
                    b
                } else {
                    b'*'
                }
            } else {
                b
            }
        }));
        return;
    }
    let Ok(s) = std::str::from_utf8(text) else {
        out.extend_from_slice(b"****");
        return;
    };
    let significant = s.chars().filter(|c| c.is_alphanumeric()).count();
    let keep_from = if significant <= 4 {
        usize::MAX
    } else {
        significant - 4
    };
    let mut seen = 0usize;
    let mut buf = [0u8; 4];
    for c in s.chars() {
        if c.is_alphanumeric() {
            if seen >= keep_from {
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            } else {
                out.push(b'*');
            }
            seen += 1;
        } else {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// `jane.doe@example.com` → `j***@example.com`. Anything that is not one address alone
/// (a sentence, a JSON document holding an address) is `****`: the domain is shown only
/// when it is all that follows the `@`.
fn email(text: &[u8], out: &mut Vec<u8>) {
    // One address alone: ASCII letters, digits and `._%+-`, one `@` not first.
    let one_address = text.len() <= 254
        && text
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._%+-@".contains(&b))
        && text.iter().filter(|&&b| b == b'@').count() == 1;
    match (text.iter().position(|&b| b == b'@'), text.first()) {
        (Some(at), Some(&first)) if at > 0 && one_address => {
            out.push(first);
            out.extend_from_slice(b"***");
            out.extend_from_slice(text.get(at..).unwrap_or(b"@"));
        }
        _ => out.extend_from_slice(b"****"),
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in text {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mask(strategy: Strategy, type_oid: u32, format: i16, value: &str) -> Option<String> {
        let mut out = Vec::new();
        let key = HashKey::new(b"k");
        mask_into(
            strategy,
            Shape::of(type_oid),
            format,
            value.as_bytes(),
            &key,
            &mut out,
        )
        .then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn text_strategies() {
        assert_eq!(mask(Strategy::Redact, 25, 0, "secret").unwrap(), "****");
        assert_eq!(
            mask(Strategy::Partial, 25, 0, "4111 1111 1111 1234").unwrap(),
            "**** **** **** 1234"
        );
        assert_eq!(mask(Strategy::Partial, 1043, 1, "123").unwrap(), "***");
        assert_eq!(
            mask(Strategy::Email, 25, 0, "jane.doe@example.com").unwrap(),
            "j***@example.com"
        );
        assert_eq!(mask(Strategy::Email, 25, 0, "no address").unwrap(), "****");
        assert_eq!(
            mask(
                Strategy::Email,
                25,
                0,
                r#"{"email":"a@b.co","card":"4111"}"#
            )
            .unwrap(),
            "****"
        );
        let h1 = mask(Strategy::Hash, 25, 0, "a@b.co").unwrap();
        assert_eq!(h1.len(), 16);
        assert_eq!(h1, mask(Strategy::Hash, 1043, 1, "a@b.co").unwrap());
        assert_ne!(h1, mask(Strategy::Hash, 25, 0, "a@b.cz").unwrap());
        assert_eq!(mask(Strategy::Null, 25, 0, "x"), None);
    }

    #[test]
    fn other_types_become_null_and_json_stays_json() {
        assert_eq!(mask(Strategy::Redact, 23, 0, "42"), None);
        assert_eq!(mask(Strategy::Partial, 1082, 1, "\0\0\0\0"), None);
        let j = mask(Strategy::Redact, 114, 0, r#"{"email":"a@b.co"}"#).unwrap();
        assert_eq!(j, "\"****\"");
        let mut out = Vec::new();
        assert!(mask_into(
            Strategy::Email,
            Shape::Jsonb,
            1,
            b"\x01\"a\\\"x@b.co\"",
            &HashKey::new(b"k"),
            &mut out
        ));
        // Not an address alone (quotes around it): redacted, still a JSON string.
        assert_eq!(out, b"\x01\"****\"");
    }
}
