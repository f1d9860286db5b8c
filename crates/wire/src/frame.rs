//! Framing: finding where a tagged message begins and ends in a byte stream.

use bytes::BufMut;

use crate::WireError;

/// The five-byte header of a tagged message: a tag and a big-endian length that counts
/// itself but not the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length of the body, without the tag and the length field.
    pub body_len: usize,
}

impl Header {
    pub const SIZE: usize = 5;

    /// Reads a header from the start of `buf`. `Ok(None)` means fewer than five bytes are
    /// there yet. The length is validated against `max` before the caller can act on it.
    pub fn parse(buf: &[u8], max: usize) -> Result<Option<Header>, WireError> {
        let Some(&[tag, a, b, c, d]) = buf.get(..Self::SIZE) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([a, b, c, d]);
        if len < 4 {
            return Err(WireError::LengthTooSmall {
                len: i64::from(len),
            });
        }
        // `len` is positive here, so the conversion is lossless.
        let len = len.unsigned_abs() as usize;
        if len > max {
            return Err(WireError::LengthTooLarge {
                len: len as u64,
                max,
            });
        }
        Ok(Some(Header {
            tag,
            body_len: len - 4,
        }))
    }

    /// Bytes of the whole frame, header included.
    pub fn frame_len(&self) -> usize {
        Self::SIZE + self.body_len
    }
}

/// Writes a tagged frame whose body is produced by `body`, back-patching the length.
pub fn write_frame(out: &mut bytes::BytesMut, tag: u8, body: impl FnOnce(&mut bytes::BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = i32::try_from(out.len() - at).unwrap_or(i32::MAX);
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends a NUL-terminated string.
pub fn put_cstr(out: &mut bytes::BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(Header::parse(b"Q\0\0\0", 100), Ok(None));
    }

    #[test]
    fn header_rejects_length_below_four() {
        assert_eq!(
            Header::parse(b"Q\0\0\0\x03", 100),
            Err(WireError::LengthTooSmall { len: 3 })
        );
        assert_eq!(
            Header::parse(b"Q\xff\xff\xff\xff", 100),
            Err(WireError::LengthTooSmall { len: -1 })
        );
    }

    #[test]
    fn header_rejects_length_above_max_before_allocating() {
        assert_eq!(
            Header::parse(b"Q\x7f\xff\xff\xff", 1024),
            Err(WireError::LengthTooLarge {
                len: 0x7fff_ffff,
                max: 1024
            })
        );
    }

    #[test]
    fn header_reads_body_length() {
        assert_eq!(
            Header::parse(b"Z\0\0\0\x05I", 100),
            Ok(Some(Header {
                tag: b'Z',
                body_len: 1
            }))
        );
    }
}
