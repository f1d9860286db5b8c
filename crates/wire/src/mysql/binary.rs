//! The binary protocol of server-side prepared statements: the answer to COM_STMT_PREPARE,
//! the head of COM_STMT_EXECUTE / FETCH, and binary result rows.
//!
//! A binary row is `0x00`, a NULL bitmap (offset 2), then each non-NULL value in the
//! encoding its column type dictates: fixed-width integers and floats, a length-prefixed
//! temporal value, or a length-encoded string. A column type this codec does not know makes
//! the row unreadable (an error), never guessed.

use super::reader::{put_lenenc_bytes, Reader};
use super::{column_type as ty, MyError};

/// The server's answer to COM_STMT_PREPARE: `0x00`, statement id, column and parameter
/// counts. Parameter definitions then column definitions follow, each list ended by EOF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    pub statement: u32,
    pub columns: u16,
    pub params: u16,
    pub warnings: u16,
}

impl PrepareOk {
    pub fn decode(payload: &[u8]) -> Result<PrepareOk, MyError> {
        let mut r = Reader::new(payload);
        if r.u8()? != 0x00 {
            return Err(MyError::Invalid("not a prepare OK packet"));
        }
        let statement = r.u32()?;
        let columns = r.u16()?;
        let params = r.u16()?;
        // A reserved byte, then the warning count (absent in some old servers' answers).
        let warnings = if r.remaining() >= 3 {
            let _reserved = r.u8()?;
            r.u16()?
        } else {
            0
        };
        Ok(PrepareOk {
            statement,
            columns,
            params,
            warnings,
        })
    }
}

/// The statement id a COM_STMT_EXECUTE, FETCH, CLOSE, RESET or SEND_LONG_DATA body starts
/// with (the command byte already taken off).
pub fn statement_id(body: &[u8]) -> Result<u32, MyError> {
    Reader::new(body).u32()
}

/// The id MariaDB reads as "the statement prepared last" in COM_STMT_EXECUTE.
pub const LAST_PREPARED: u32 = u32::MAX;

/// COM_STMT_EXECUTE's flags: a cursor is asked for (rows then come by COM_STMT_FETCH).
pub fn execute_flags(body: &[u8]) -> Result<u8, MyError> {
    let mut r = Reader::new(body);
    r.u32()?;
    r.u8()
}

/// Rewrites the statement id of a command packet (command byte first) in place.
pub fn set_statement_id(packet: &mut [u8], id: u32) -> Result<(), MyError> {
    match packet.get_mut(1..5) {
        Some(slot) => {
            slot.copy_from_slice(&id.to_le_bytes());
            Ok(())
        }
        None => Err(MyError::Truncated { wanted: 5 }),
    }
}

/// One value of a binary row: a string's content (without its length), or a fixed or
/// temporal value's raw bytes (a temporal value with its length byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryValue<'a> {
    pub bytes: &'a [u8],
    /// Written back length-encoded (a string, decimal, bit, JSON, …).
    pub string: bool,
}

/// How a column type's values are laid out in a binary row.
fn width(column_type: u8) -> Result<Width, MyError> {
    Ok(match column_type {
        ty::DECIMAL
        | ty::NEWDECIMAL
        | ty::VARCHAR
        | ty::BIT
        | ty::JSON
        | ty::ENUM
        | ty::SET
        | ty::TINY_BLOB
        | ty::MEDIUM_BLOB
        | ty::LONG_BLOB
        | ty::BLOB
        | ty::VAR_STRING
        | ty::STRING
        | ty::GEOMETRY => Width::String,
        ty::LONGLONG | ty::DOUBLE => Width::Fixed(8),
        ty::LONG | ty::INT24 | ty::FLOAT => Width::Fixed(4),
        ty::SHORT | ty::YEAR => Width::Fixed(2),
        ty::TINY => Width::Fixed(1),
        ty::DATE | ty::DATETIME | ty::TIMESTAMP | ty::TIME => Width::Temporal,
        ty::NULL => Width::Fixed(0),
        _ => return Err(MyError::Invalid("a binary row column of an unknown type")),
    })
}

enum Width {
    String,
    Fixed(usize),
    Temporal,
}

fn bitmap_len(columns: usize) -> usize {
    (columns + 7 + 2) / 8
}

/// Reads a binary result row whose columns have these types (one per column, in order).
pub fn binary_row<'a>(
    payload: &'a [u8],
    types: &[u8],
) -> Result<Vec<Option<BinaryValue<'a>>>, MyError> {
    let mut r = Reader::new(payload);
    if r.u8()? != 0x00 {
        return Err(MyError::Invalid("not a binary row"));
    }
    let bitmap = r.bytes(bitmap_len(types.len()))?;
    let mut values = Vec::with_capacity(types.len());
    for (i, t) in types.iter().enumerate() {
        let bit = i + 2;
        let null = bitmap
            .get(bit / 8)
            .is_some_and(|byte| byte & (1 << (bit % 8)) != 0);
        if null {
            values.push(None);
            continue;
        }
        let value = match width(*t)? {
            Width::String => BinaryValue {
                bytes: r.lenenc()?,
                string: true,
            },
            Width::Fixed(n) => BinaryValue {
                bytes: r.bytes(n)?,
                string: false,
            },
            Width::Temporal => {
                let n = usize::from(r.peek().ok_or(MyError::Truncated { wanted: 1 })?);
                BinaryValue {
                    bytes: r.bytes(1 + n)?,
                    string: false,
                }
            }
        };
        values.push(Some(value));
    }
    if !r.is_empty() {
        return Err(MyError::Invalid(
            "trailing bytes after a binary row's values",
        ));
    }
    Ok(values)
}

/// Writes a binary result row: `0x00`, the NULL bitmap, the values.
pub fn put_binary_row(out: &mut Vec<u8>, values: &[Option<BinaryValue<'_>>]) {
    out.push(0x00);
    let start = out.len();
    out.resize(start + bitmap_len(values.len()), 0);
    for (i, v) in values.iter().enumerate() {
        if v.is_none() {
            let bit = i + 2;
            if let Some(byte) = out.get_mut(start + bit / 8) {
                *byte |= 1 << (bit % 8);
            }
        }
    }
    for v in values.iter().flatten() {
        if v.string {
            put_lenenc_bytes(out, v.bytes);
        } else {
            out.extend_from_slice(v.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_round_trips_with_nulls_strings_and_temporals() {
        let types = [
            ty::LONGLONG,
            ty::VAR_STRING,
            ty::NULL,
            ty::DATETIME,
            ty::TINY,
        ];
        let values = [
            Some(BinaryValue {
                bytes: &[7, 0, 0, 0, 0, 0, 0, 0],
                string: false,
            }),
            Some(BinaryValue {
                bytes: b"hello",
                string: true,
            }),
            None,
            Some(BinaryValue {
                bytes: &[4, 0xe8, 0x07, 12, 3],
                string: false,
            }),
            None,
        ];
        let mut out = Vec::new();
        put_binary_row(&mut out, &values);
        assert_eq!(binary_row(&out, &types).unwrap(), values);
    }

    #[test]
    fn hostile_rows_are_errors() {
        let types = [ty::VAR_STRING, ty::LONG];
        for bad in [
            &[][..],
            &[0x01, 0],
            &[0x00],
            &[0x00, 0, 0xfc, 0xff],
            &[0x00, 0, 2, b'a'],
            &[0x00, 0, 1, b'a', 1, 2, 3],
            &[0x00, 0, 1, b'a', 1, 2, 3, 4, 5],
        ] {
            assert!(binary_row(bad, &types).is_err(), "{bad:?}");
        }
        assert!(binary_row(&[0x00, 0, 1], &[0x42]).is_err());
        assert!(binary_row(&[0x00, 0, 9], &[ty::DATE]).is_err());
    }

    #[test]
    fn prepare_ok_and_ids() {
        let p = [0, 5, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            PrepareOk::decode(&p).unwrap(),
            PrepareOk {
                statement: 5,
                columns: 2,
                params: 1,
                warnings: 0
            }
        );
        assert!(PrepareOk::decode(&[0, 1]).is_err());
        let mut exec = vec![0x17, 9, 0, 0, 0, 1, 1, 0, 0, 0];
        assert_eq!(statement_id(&exec[1..]).unwrap(), 9);
        assert_eq!(execute_flags(&exec[1..]).unwrap(), 1);
        set_statement_id(&mut exec, 300).unwrap();
        assert_eq!(statement_id(&exec[1..]).unwrap(), 300);
        assert!(set_statement_id(&mut [0x17, 1], 1).is_err());
    }
}
