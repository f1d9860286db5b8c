use super::MyError;

/// A bounds-checked reader over one packet's payload. Every read either succeeds or returns
/// [`MyError::Truncated`]; nothing here can panic on short input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], MyError> {
        if self.buf.len() < n {
            return Err(MyError::Truncated {
                wanted: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, MyError> {
        Ok(self.bytes(1)?.first().copied().unwrap_or(0))
    }

    fn le(&mut self, n: usize) -> Result<u64, MyError> {
        Ok(self
            .bytes(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
    }

    pub fn u16(&mut self) -> Result<u16, MyError> {
        Ok(self.le(2)? as u16)
    }

    pub fn u24(&mut self) -> Result<u32, MyError> {
        Ok(self.le(3)? as u32)
    }

    pub fn u32(&mut self) -> Result<u32, MyError> {
        Ok(self.le(4)? as u32)
    }

    pub fn u64(&mut self) -> Result<u64, MyError> {
        self.le(8)
    }

    /// A length-encoded integer; `None` is the NULL marker (0xFB).
    pub fn lenenc_int(&mut self) -> Result<Option<u64>, MyError> {
        match self.u8()? {
            n @ 0..=0xfa => Ok(Some(u64::from(n))),
            0xfb => Ok(None),
            0xfc => Ok(Some(self.le(2)?)),
            0xfd => Ok(Some(self.le(3)?)),
            0xfe => Ok(Some(self.le(8)?)),
            _ => Err(MyError::Invalid("length-encoded integer starts with 0xff")),
        }
    }

    /// A length-encoded string; `None` for NULL. The length is checked against the bytes
    /// present before anything is taken.
    pub fn lenenc_bytes(&mut self) -> Result<Option<&'a [u8]>, MyError> {
        match self.lenenc_int()? {
            None => Ok(None),
            Some(n) => {
                let n =
                    usize::try_from(n).map_err(|_| MyError::Truncated { wanted: usize::MAX })?;
                self.bytes(n).map(Some)
            }
        }
    }

    /// A length-encoded string that must not be NULL.
    pub fn lenenc(&mut self) -> Result<&'a [u8], MyError> {
        self.lenenc_bytes()?
            .ok_or(MyError::Invalid("NULL where a string is required"))
    }

    /// A NUL-terminated string, without its NUL.
    pub fn nul_str(&mut self) -> Result<&'a [u8], MyError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or(MyError::Invalid("string is not NUL-terminated"))?;
        let s = self.bytes(end)?;
        self.bytes(1)?;
        Ok(s)
    }

    /// A NUL-terminated string, or the rest when no NUL follows (clients differ).
    pub fn nul_str_or_rest(&mut self) -> &'a [u8] {
        match self.buf.iter().position(|b| *b == 0) {
            Some(end) => {
                let (s, tail) = self.buf.split_at(end);
                self.buf = tail.get(1..).unwrap_or(&[]);
                s
            }
            None => self.rest(),
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfa => out.push(n as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_lenenc_int(out, b.len() as u64);
    out.extend_from_slice(b);
}
