//! Messages a server sends.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{put_cstr, write_frame};
use crate::{Cursor, WireError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<Bytes>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos, GSSAPI, SSPI: methods Weir does not speak to an upstream.
    Other {
        code: i32,
        data: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: Bytes,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: i16,
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse, in wire order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields(pub Vec<(u8, Bytes)>);

impl Fields {
    pub fn get(&self, code: u8) -> Option<&Bytes> {
        self.0.iter().find(|(c, _)| *c == code).map(|(_, v)| v)
    }

    /// The SQLSTATE ('C' field).
    pub fn code(&self) -> Option<&str> {
        self.get(b'C').and_then(|b| std::str::from_utf8(b).ok())
    }

    /// A new error with the severity, SQLSTATE and message PostgreSQL clients expect.
    pub fn new(severity: &str, code: &str, message: &str) -> Fields {
        Fields(vec![
            (b'S', Bytes::copy_from_slice(severity.as_bytes())),
            (b'V', Bytes::copy_from_slice(severity.as_bytes())),
            (b'C', Bytes::copy_from_slice(code.as_bytes())),
            (b'M', Bytes::copy_from_slice(message.as_bytes())),
        ])
    }

    pub fn with(mut self, code: u8, value: &str) -> Fields {
        self.0
            .push((code, Bytes::copy_from_slice(value.as_bytes())));
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Authentication(Authentication),
    BackendKeyData {
        process_id: i32,
        secret_key: Bytes,
    },
    ParameterStatus {
        name: Bytes,
        value: Bytes,
    },
    ReadyForQuery(TxStatus),
    ErrorResponse(Fields),
    NoticeResponse(Fields),
    NotificationResponse {
        process_id: i32,
        channel: Bytes,
        payload: Bytes,
    },
    RowDescription(Vec<FieldDescription>),
    DataRow(Vec<Option<Bytes>>),
    CommandComplete(Bytes),
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    PortalSuspended,
    EmptyQueryResponse,
    ParameterDescription(Vec<u32>),
    CopyInResponse {
        format: u8,
        columns: Vec<i16>,
    },
    CopyOutResponse {
        format: u8,
        columns: Vec<i16>,
    },
    CopyBothResponse {
        format: u8,
        columns: Vec<i16>,
    },
    CopyData(Bytes),
    CopyDone,
    FunctionCallResponse(Option<Bytes>),
    NegotiateProtocolVersion {
        newest_minor: i32,
        unsupported: Vec<Bytes>,
    },
}

impl Message {
    pub fn decode(tag: u8, body: Bytes) -> Result<Message, WireError> {
        let t = crate::tag_char(tag);
        let mut c = Cursor::new(tag, body);
        let msg = match tag {
            b'R' => Message::Authentication(match c.i32()? {
                0 => Authentication::Ok,
                3 => Authentication::CleartextPassword,
                5 => {
                    let s = c.bytes(4)?;
                    let mut salt = [0u8; 4];
                    salt.copy_from_slice(&s);
                    Authentication::Md5Password { salt }
                }
                10 => {
                    let mut mechanisms = Vec::new();
                    loop {
                        let m = c.cstr()?;
                        if m.is_empty() {
                            break;
                        }
                        mechanisms.push(m);
                    }
                    Authentication::Sasl { mechanisms }
                }
                11 => Authentication::SaslContinue(c.rest()),
                12 => Authentication::SaslFinal(c.rest()),
                code => Authentication::Other {
                    code,
                    data: c.rest(),
                },
            }),
            b'K' => Message::BackendKeyData {
                process_id: c.i32()?,
                secret_key: c.rest(),
            },
            b'S' => Message::ParameterStatus {
                name: c.cstr()?,
                value: c.cstr()?,
            },
            b'Z' => {
                Message::ReadyForQuery(TxStatus::from_byte(c.u8()?).ok_or(WireError::Invalid {
                    tag: t,
                    what: "transaction status",
                })?)
            }
            b'E' => Message::ErrorResponse(read_fields(&mut c)?),
            b'N' => Message::NoticeResponse(read_fields(&mut c)?),
            b'A' => Message::NotificationResponse {
                process_id: c.i32()?,
                channel: c.cstr()?,
                payload: c.cstr()?,
            },
            b'T' => {
                let n = c.count16(19)?;
                let mut fields = Vec::with_capacity(n);
                for _ in 0..n {
                    fields.push(FieldDescription {
                        name: c.cstr()?,
                        table_oid: c.i32()? as u32,
                        column: c.i16()?,
                        type_oid: c.i32()? as u32,
                        type_size: c.i16()?,
                        type_modifier: c.i32()?,
                        format: c.i16()?,
                    });
                }
                Message::RowDescription(fields)
            }
            b'D' => {
                let n = c.count16(4)?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = c.i32()?;
                    match len {
                        -1 => values.push(None),
                        l if l < -1 => {
                            return Err(WireError::Invalid {
                                tag: t,
                                what: "value length below -1",
                            })
                        }
                        l => values.push(Some(c.bytes(l.unsigned_abs() as usize)?)),
                    }
                }
                Message::DataRow(values)
            }
            b'C' => Message::CommandComplete(c.cstr()?),
            b'1' => Message::ParseComplete,
            b'2' => Message::BindComplete,
            b'3' => Message::CloseComplete,
            b'n' => Message::NoData,
            b's' => Message::PortalSuspended,
            b'I' => Message::EmptyQueryResponse,
            b't' => {
                let n = c.count16(4)?;
                let mut types = Vec::with_capacity(n);
                for _ in 0..n {
                    types.push(c.i32()? as u32);
                }
                Message::ParameterDescription(types)
            }
            b'G' | b'H' | b'W' => {
                let format = c.u8()?;
                let n = c.count16(2)?;
                let mut columns = Vec::with_capacity(n);
                for _ in 0..n {
                    columns.push(c.i16()?);
                }
                match tag {
                    b'G' => Message::CopyInResponse { format, columns },
                    b'H' => Message::CopyOutResponse { format, columns },
                    _ => Message::CopyBothResponse { format, columns },
                }
            }
            b'd' => Message::CopyData(c.rest()),
            b'c' => Message::CopyDone,
            b'V' => {
                let len = c.i32()?;
                Message::FunctionCallResponse(match len {
                    -1 => None,
                    l if l < -1 => {
                        return Err(WireError::Invalid {
                            tag: t,
                            what: "value length below -1",
                        })
                    }
                    l => Some(c.bytes(l.unsigned_abs() as usize)?),
                })
            }
            b'v' => {
                let newest_minor = c.i32()?;
                let n = c.count32(1)?;
                let mut unsupported = Vec::with_capacity(n);
                for _ in 0..n {
                    unsupported.push(c.cstr()?);
                }
                Message::NegotiateProtocolVersion {
                    newest_minor,
                    unsupported,
                }
            }
            _ => {
                return Err(WireError::UnknownTag {
                    tag,
                    direction: "backend",
                })
            }
        };
        c.finish()?;
        Ok(msg)
    }

    pub fn tag(&self) -> u8 {
        match self {
            Message::Authentication(_) => b'R',
            Message::BackendKeyData { .. } => b'K',
            Message::ParameterStatus { .. } => b'S',
            Message::ReadyForQuery(_) => b'Z',
            Message::ErrorResponse(_) => b'E',
            Message::NoticeResponse(_) => b'N',
            Message::NotificationResponse { .. } => b'A',
            Message::RowDescription(_) => b'T',
            Message::DataRow(_) => b'D',
            Message::CommandComplete(_) => b'C',
            Message::ParseComplete => b'1',
            Message::BindComplete => b'2',
            Message::CloseComplete => b'3',
            Message::NoData => b'n',
            Message::PortalSuspended => b's',
            Message::EmptyQueryResponse => b'I',
            Message::ParameterDescription(_) => b't',
            Message::CopyInResponse { .. } => b'G',
            Message::CopyOutResponse { .. } => b'H',
            Message::CopyBothResponse { .. } => b'W',
            Message::CopyData(_) => b'd',
            Message::CopyDone => b'c',
            Message::FunctionCallResponse(_) => b'V',
            Message::NegotiateProtocolVersion { .. } => b'v',
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        write_frame(out, self.tag(), |out| match self {
            Message::Authentication(a) => match a {
                Authentication::Ok => out.put_i32(0),
                Authentication::CleartextPassword => out.put_i32(3),
                Authentication::Md5Password { salt } => {
                    out.put_i32(5);
                    out.put_slice(salt);
                }
                Authentication::Sasl { mechanisms } => {
                    out.put_i32(10);
                    for m in mechanisms {
                        put_cstr(out, m);
                    }
                    out.put_u8(0);
                }
                Authentication::SaslContinue(d) => {
                    out.put_i32(11);
                    out.put_slice(d);
                }
                Authentication::SaslFinal(d) => {
                    out.put_i32(12);
                    out.put_slice(d);
                }
                Authentication::Other { code, data } => {
                    out.put_i32(*code);
                    out.put_slice(data);
                }
            },
            Message::BackendKeyData {
                process_id,
                secret_key,
            } => {
                out.put_i32(*process_id);
                out.put_slice(secret_key);
            }
            Message::ParameterStatus { name, value } => {
                put_cstr(out, name);
                put_cstr(out, value);
            }
            Message::ReadyForQuery(s) => out.put_u8(s.byte()),
            Message::ErrorResponse(f) | Message::NoticeResponse(f) => {
                for (code, value) in &f.0 {
                    out.put_u8(*code);
                    put_cstr(out, value);
                }
                out.put_u8(0);
            }
            Message::NotificationResponse {
                process_id,
                channel,
                payload,
            } => {
                out.put_i32(*process_id);
                put_cstr(out, channel);
                put_cstr(out, payload);
            }
            Message::RowDescription(fields) => {
                out.put_i16(len16(fields.len()));
                for f in fields {
                    put_cstr(out, &f.name);
                    out.put_u32(f.table_oid);
                    out.put_i16(f.column);
                    out.put_u32(f.type_oid);
                    out.put_i16(f.type_size);
                    out.put_i32(f.type_modifier);
                    out.put_i16(f.format);
                }
            }
            Message::DataRow(values) => {
                out.put_i16(len16(values.len()));
                for v in values {
                    put_value(out, v.as_ref());
                }
            }
            Message::CommandComplete(tag) => put_cstr(out, tag),
            Message::ParseComplete
            | Message::BindComplete
            | Message::CloseComplete
            | Message::NoData
            | Message::PortalSuspended
            | Message::EmptyQueryResponse
            | Message::CopyDone => {}
            Message::ParameterDescription(types) => {
                out.put_i16(len16(types.len()));
                for t in types {
                    out.put_u32(*t);
                }
            }
            Message::CopyInResponse { format, columns }
            | Message::CopyOutResponse { format, columns }
            | Message::CopyBothResponse { format, columns } => {
                out.put_u8(*format);
                out.put_i16(len16(columns.len()));
                for c in columns {
                    out.put_i16(*c);
                }
            }
            Message::CopyData(d) => out.put_slice(d),
            Message::FunctionCallResponse(v) => put_value(out, v.as_ref()),
            Message::NegotiateProtocolVersion {
                newest_minor,
                unsupported,
            } => {
                out.put_i32(*newest_minor);
                out.put_i32(i32::try_from(unsupported.len()).unwrap_or(i32::MAX));
                for o in unsupported {
                    put_cstr(out, o);
                }
            }
        });
    }

    /// An ErrorResponse frame, ready to write.
    pub fn error(fields: Fields) -> BytesMut {
        let mut out = BytesMut::new();
        Message::ErrorResponse(fields).encode(&mut out);
        out
    }

    pub fn notice(fields: Fields) -> BytesMut {
        let mut out = BytesMut::new();
        Message::NoticeResponse(fields).encode(&mut out);
        out
    }
}

fn len16(n: usize) -> i16 {
    i16::try_from(n).unwrap_or(i16::MAX)
}

fn put_value(out: &mut BytesMut, v: Option<&Bytes>) {
    match v {
        None => out.put_i32(-1),
        Some(b) => {
            out.put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
            out.put_slice(b);
        }
    }
}

fn read_fields(c: &mut Cursor) -> Result<Fields, WireError> {
    let mut fields = Vec::new();
    loop {
        let code = c.u8()?;
        if code == 0 {
            break;
        }
        fields.push((code, c.cstr()?));
    }
    Ok(Fields(fields))
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
            Message::Authentication(Authentication::Ok),
            Message::Authentication(Authentication::Md5Password { salt: [1, 2, 3, 4] }),
            Message::Authentication(Authentication::Sasl {
                mechanisms: vec![b(b"SCRAM-SHA-256")],
            }),
            Message::Authentication(Authentication::SaslContinue(b(b"r=abc"))),
            Message::BackendKeyData {
                process_id: 7,
                secret_key: b(b"\0\0\0\x09"),
            },
            Message::ParameterStatus {
                name: b(b"server_version"),
                value: b(b"15.0"),
            },
            Message::ReadyForQuery(TxStatus::InTransaction),
            Message::ErrorResponse(Fields::new("ERROR", "42501", "weir: denied")),
            Message::RowDescription(vec![FieldDescription {
                name: b(b"id"),
                table_oid: 16384,
                column: 1,
                type_oid: 23,
                type_size: 4,
                type_modifier: -1,
                format: 0,
            }]),
            Message::DataRow(vec![Some(b(b"1")), None]),
            Message::CommandComplete(b(b"SELECT 1")),
            Message::ParameterDescription(vec![23]),
            Message::CopyOutResponse {
                format: 0,
                columns: vec![0, 0],
            },
            Message::FunctionCallResponse(None),
            Message::NegotiateProtocolVersion {
                newest_minor: 0,
                unsupported: vec![b(b"_pq_.x")],
            },
        ] {
            roundtrip(m);
        }
    }

    #[test]
    fn datarow_with_huge_count_is_truncated_not_allocated() {
        assert!(matches!(
            Message::decode(b'D', Bytes::from_static(b"\x7f\xff")),
            Err(WireError::Truncated { .. })
        ));
    }
}
