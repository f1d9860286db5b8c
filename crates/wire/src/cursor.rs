use bytes::{Buf, Bytes};

use crate::{tag_char, WireError};

/// A bounds-checked reader over one message body. Every read either succeeds or returns
/// [`WireError::Truncated`]; nothing here can panic on short input.
#[derive(Debug)]
pub struct Cursor {
    tag: u8,
    buf: Bytes,
}

impl Cursor {
    pub fn new(tag: u8, buf: Bytes) -> Cursor {
        Cursor { tag, buf }
    }

    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.buf.remaining() < n {
            return Err(WireError::Truncated {
                tag: tag_char(self.tag),
                wanted: n - self.buf.remaining(),
            });
        }
        Ok(())
    }

    pub fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub fn i16(&mut self) -> Result<i16, WireError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }

    /// A count that must be non-negative; also checked against the bytes left, given the
    /// smallest possible size of one element, so a count never sizes an allocation alone.
    pub fn count16(&mut self, min_elem: usize) -> Result<usize, WireError> {
        let n = self.i16()?;
        self.check_count(i64::from(n), min_elem)
    }

    pub fn count32(&mut self, min_elem: usize) -> Result<usize, WireError> {
        let n = self.i32()?;
        self.check_count(i64::from(n), min_elem)
    }

    fn check_count(&self, n: i64, min_elem: usize) -> Result<usize, WireError> {
        let n = usize::try_from(n).map_err(|_| WireError::NegativeCount {
            tag: tag_char(self.tag),
            count: n,
        })?;
        self.need(n.saturating_mul(min_elem))?;
        Ok(n)
    }

    /// A NUL-terminated string, returned without its terminator.
    pub fn cstr(&mut self) -> Result<Bytes, WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::UnterminatedString {
                tag: tag_char(self.tag),
            })?;
        let s = self.buf.split_to(end);
        self.buf.advance(1);
        Ok(s)
    }

    pub fn bytes(&mut self, n: usize) -> Result<Bytes, WireError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    pub fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    /// Fails if anything is left: a message with trailing garbage is malformed.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.has_remaining() {
            return Err(WireError::TrailingBytes {
                tag: tag_char(self.tag),
                extra: self.buf.remaining(),
            });
        }
        Ok(())
    }
}
