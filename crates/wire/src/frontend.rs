//! Messages a client sends after startup.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{put_cstr, write_frame};
use crate::{Cursor, WireError};

/// What a Describe or Close refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

impl Target {
    fn decode(b: u8, tag: char) -> Result<Target, WireError> {
        match b {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            _ => Err(WireError::Invalid {
                tag,
                what: "describe/close target must be 'S' or 'P'",
            }),
        }
    }

    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub name: Bytes,
    pub query: Bytes,
    pub param_types: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: Bytes,
    pub statement: Bytes,
    pub param_formats: Vec<i16>,
    /// `None` is SQL NULL (length -1 on the wire).
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    pub oid: i32,
    pub arg_formats: Vec<i16>,
    pub args: Vec<Option<Bytes>>,
    pub result_format: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Query(Bytes),
    Parse(Parse),
    Bind(Bind),
    Describe(Target, Bytes),
    Execute {
        portal: Bytes,
        max_rows: i32,
    },
    Close(Target, Bytes),
    Sync,
    Flush,
    Terminate,
    CopyData(Bytes),
    CopyDone,
    CopyFail(Bytes),
    FunctionCall(FunctionCall),
    /// PasswordMessage, SASLInitialResponse or SASLResponse: which one depends on the
    /// authentication exchange in progress, so the body is kept raw.
    Password(Bytes),
}

impl Message {
    /// Decodes one message from its tag and body (the body excludes the five-byte header).
    pub fn decode(tag: u8, body: Bytes) -> Result<Message, WireError> {
        let t = crate::tag_char(tag);
        let mut c = Cursor::new(tag, body);
        let msg = match tag {
            b'Q' => Message::Query(c.cstr()?),
            b'P' => {
                let name = c.cstr()?;
                let query = c.cstr()?;
                let n = c.count16(4)?;
                let mut param_types = Vec::with_capacity(n);
                for _ in 0..n {
                    param_types.push(c.i32()?);
                }
                Message::Parse(Parse {
                    name,
                    query,
                    param_types,
                })
            }
            b'B' => {
                let portal = c.cstr()?;
                let statement = c.cstr()?;
                let param_formats = read_formats(&mut c)?;
                let params = read_values(&mut c, t)?;
                let result_formats = read_formats(&mut c)?;
                Message::Bind(Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                })
            }
            b'D' => {
                let target = Target::decode(c.u8()?, t)?;
                Message::Describe(target, c.cstr()?)
            }
            b'E' => {
                let portal = c.cstr()?;
                let max_rows = c.i32()?;
                Message::Execute { portal, max_rows }
            }
            b'C' => {
                let target = Target::decode(c.u8()?, t)?;
                Message::Close(target, c.cstr()?)
            }
            b'S' => Message::Sync,
            b'H' => Message::Flush,
            b'X' => Message::Terminate,
            b'd' => Message::CopyData(c.rest()),
            b'c' => Message::CopyDone,
            b'f' => Message::CopyFail(c.cstr()?),
            b'F' => {
                let oid = c.i32()?;
                let arg_formats = read_formats(&mut c)?;
                let args = read_values(&mut c, t)?;
                let result_format = c.i16()?;
                Message::FunctionCall(FunctionCall {
                    oid,
                    arg_formats,
                    args,
                    result_format,
                })
            }
            b'p' => Message::Password(c.rest()),
            _ => {
                return Err(WireError::UnknownTag {
                    tag,
                    direction: "frontend",
                })
            }
        };
        c.finish()?;
        Ok(msg)
    }

    pub fn tag(&self) -> u8 {
        match self {
            Message::Query(_) => b'Q',
            Message::Parse(_) => b'P',
            Message::Bind(_) => b'B',
            Message::Describe(..) => b'D',
            Message::Execute { .. } => b'E',
            Message::Close(..) => b'C',
            Message::Sync => b'S',
            Message::Flush => b'H',
            Message::Terminate => b'X',
            Message::CopyData(_) => b'd',
            Message::CopyDone => b'c',
            Message::CopyFail(_) => b'f',
            Message::FunctionCall(_) => b'F',
            Message::Password(_) => b'p',
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        write_frame(out, self.tag(), |out| match self {
            Message::Query(q) => put_cstr(out, q),
            Message::Parse(p) => {
                put_cstr(out, &p.name);
                put_cstr(out, &p.query);
                put_len16(out, p.param_types.len());
                for t in &p.param_types {
                    out.put_i32(*t);
                }
            }
            Message::Bind(b) => {
                put_cstr(out, &b.portal);
                put_cstr(out, &b.statement);
                put_formats(out, &b.param_formats);
                put_values(out, &b.params);
                put_formats(out, &b.result_formats);
            }
            Message::Describe(t, name) | Message::Close(t, name) => {
                out.put_u8(t.byte());
                put_cstr(out, name);
            }
            Message::Execute { portal, max_rows } => {
                put_cstr(out, portal);
                out.put_i32(*max_rows);
            }
            Message::Sync | Message::Flush | Message::Terminate | Message::CopyDone => {}
            Message::CopyData(d) | Message::Password(d) => out.put_slice(d),
            Message::CopyFail(m) => put_cstr(out, m),
            Message::FunctionCall(f) => {
                out.put_i32(f.oid);
                put_formats(out, &f.arg_formats);
                put_values(out, &f.args);
                out.put_i16(f.result_format);
            }
        });
    }
}

fn read_formats(c: &mut Cursor) -> Result<Vec<i16>, WireError> {
    let n = c.count16(2)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(c.i16()?);
    }
    Ok(v)
}

fn read_values(c: &mut Cursor, tag: char) -> Result<Vec<Option<Bytes>>, WireError> {
    let n = c.count16(4)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let len = c.i32()?;
        match len {
            -1 => v.push(None),
            l if l < -1 => {
                return Err(WireError::Invalid {
                    tag,
                    what: "value length below -1",
                })
            }
            l => v.push(Some(c.bytes(l.unsigned_abs() as usize)?)),
        }
    }
    Ok(v)
}

fn put_len16(out: &mut BytesMut, n: usize) {
    out.put_i16(i16::try_from(n).unwrap_or(i16::MAX));
}

fn put_formats(out: &mut BytesMut, f: &[i16]) {
    put_len16(out, f.len());
    for x in f {
        out.put_i16(*x);
    }
}

fn put_values(out: &mut BytesMut, vals: &[Option<Bytes>]) {
    put_len16(out, vals.len());
    for v in vals {
        match v {
            None => out.put_i32(-1),
            Some(b) => {
                out.put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
                out.put_slice(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Header;

    fn roundtrip(m: Message) {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        let h = Header::parse(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(h.frame_len(), out.len());
        let body = out.freeze().slice(5..);
        assert_eq!(Message::decode(h.tag, body).unwrap(), m);
    }

    #[test]
    fn every_message_roundtrips() {
        let b = Bytes::from_static;
        for m in [
            Message::Query(b(b"select 1")),
            Message::Parse(Parse {
                name: b(b"s1"),
                query: b(b"select $1"),
                param_types: vec![23, 0],
            }),
            Message::Bind(Bind {
                portal: b(b""),
                statement: b(b"s1"),
                param_formats: vec![1],
                params: vec![Some(b(b"\0\0\0\x01")), None],
                result_formats: vec![0, 1],
            }),
            Message::Describe(Target::Portal, b(b"p")),
            Message::Execute {
                portal: b(b""),
                max_rows: 10,
            },
            Message::Close(Target::Statement, b(b"s1")),
            Message::Sync,
            Message::Flush,
            Message::Terminate,
            Message::CopyData(b(b"1\t2\n")),
            Message::CopyDone,
            Message::CopyFail(b(b"oops")),
            Message::FunctionCall(FunctionCall {
                oid: 764,
                arg_formats: vec![],
                args: vec![Some(b(b"x"))],
                result_format: 0,
            }),
            Message::Password(b(b"secret\0")),
        ] {
            roundtrip(m);
        }
    }

    #[test]
    fn bind_with_huge_param_count_is_truncated_not_allocated() {
        // 32767 parameters claimed, none present.
        let body = Bytes::from_static(b"\0\0\0\0\x7f\xff");
        assert!(matches!(
            Message::decode(b'B', body),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn bind_value_length_beyond_body_is_truncated() {
        let body = Bytes::from_static(b"\0\0\0\0\0\x01\x7f\xff\xff\xff");
        assert!(matches!(
            Message::decode(b'B', body),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn unknown_tag_is_rejected() {
        assert_eq!(
            Message::decode(b'z', Bytes::new()),
            Err(WireError::UnknownTag {
                tag: b'z',
                direction: "frontend"
            })
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        assert!(matches!(
            Message::decode(b'S', Bytes::from_static(b"x")),
            Err(WireError::TrailingBytes { .. })
        ));
    }
}
