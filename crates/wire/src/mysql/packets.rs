//! The packets Weir reads or writes, each with `decode` (from one logical packet's payload)
//! and `encode` (to a payload, framed by [`super::frame`]).

use super::reader::{put_lenenc_bytes, put_lenenc_int, Reader};
use super::{cap, MyError};

/// The server's greeting (`Protocol::HandshakeV10`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub server_version: Vec<u8>,
    pub connection_id: u32,
    /// The nonce: 20 bytes in practice (8 + 12).
    pub auth_data: Vec<u8>,
    pub capabilities: u32,
    pub charset: u8,
    pub status: u16,
    pub auth_plugin: Vec<u8>,
}

impl Handshake {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(10);
        out.extend_from_slice(&self.server_version);
        out.push(0);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        let (first, second) = self.auth_data.split_at(self.auth_data.len().min(8));
        out.extend_from_slice(first);
        out.extend(std::iter::repeat_n(0, 8 - first.len()));
        out.push(0);
        out.extend_from_slice(&(self.capabilities as u16).to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&((self.capabilities >> 16) as u16).to_le_bytes());
        out.push((self.auth_data.len() + 1).min(255) as u8);
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(second);
        out.push(0);
        out.extend_from_slice(&self.auth_plugin);
        out.push(0);
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Handshake, MyError> {
        let mut r = Reader::new(payload);
        if r.u8()? != 10 {
            return Err(MyError::Invalid("not a protocol 10 handshake"));
        }
        let server_version = r.nul_str()?.to_vec();
        let connection_id = r.u32()?;
        let mut auth_data = r.bytes(8)?.to_vec();
        r.u8()?;
        let low = r.u16()?;
        let charset = r.u8()?;
        let status = r.u16()?;
        let high = r.u16()?;
        let capabilities = u32::from(low) | u32::from(high) << 16;
        let data_len = r.u8()?;
        r.bytes(10)?;
        if capabilities & cap::SECURE_CONNECTION != 0 {
            let n = usize::from(data_len).saturating_sub(8).max(13);
            let part = r.bytes(n.min(r.remaining()))?;
            // The second part ends with a NUL that is not part of the nonce.
            let part = part.strip_suffix(&[0]).unwrap_or(part);
            auth_data.extend_from_slice(part);
        }
        let auth_plugin = if capabilities & cap::PLUGIN_AUTH != 0 {
            r.nul_str_or_rest().to_vec()
        } else {
            Vec::new()
        };
        Ok(Handshake {
            server_version,
            connection_id,
            auth_data,
            capabilities,
            charset,
            status,
            auth_plugin,
        })
    }
}

/// The client's answer to the greeting (`HandshakeResponse41`), or the first 32 bytes of it
/// when the client asks for TLS first (`SSLRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    pub max_packet: u32,
    pub charset: u8,
    pub user: Vec<u8>,
    pub auth_response: Vec<u8>,
    pub database: Option<Vec<u8>>,
    pub auth_plugin: Option<Vec<u8>>,
    /// Connection attributes as sent (key/value pairs, length-encoded), not interpreted.
    pub attributes: Option<Vec<u8>>,
}

/// Bytes of an SSLRequest: capabilities, max packet, charset, 23 bytes of filler.
pub const SSL_REQUEST_LEN: usize = 32;

impl HandshakeResponse {
    /// Whether a payload is an SSLRequest (the client switches to TLS next).
    pub fn is_ssl_request(payload: &[u8]) -> bool {
        payload.len() == SSL_REQUEST_LEN
            && Reader::new(payload)
                .u32()
                .is_ok_and(|c| c & cap::SSL != 0 && c & cap::PROTOCOL_41 != 0)
    }

    pub fn decode(payload: &[u8]) -> Result<HandshakeResponse, MyError> {
        let mut r = Reader::new(payload);
        let capabilities = r.u32()?;
        if capabilities & cap::PROTOCOL_41 == 0 {
            return Err(MyError::Invalid("client does not speak protocol 4.1"));
        }
        let max_packet = r.u32()?;
        let charset = r.u8()?;
        r.bytes(23)?;
        let user = r.nul_str()?.to_vec();
        let auth_response = if capabilities & cap::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc()?.to_vec()
        } else if capabilities & cap::SECURE_CONNECTION != 0 {
            let n = r.u8()?;
            r.bytes(usize::from(n))?.to_vec()
        } else {
            r.nul_str()?.to_vec()
        };
        let database = if capabilities & cap::CONNECT_WITH_DB != 0 && !r.is_empty() {
            Some(r.nul_str_or_rest().to_vec())
        } else {
            None
        };
        let auth_plugin = if capabilities & cap::PLUGIN_AUTH != 0 && !r.is_empty() {
            Some(r.nul_str_or_rest().to_vec())
        } else {
            None
        };
        let attributes = if capabilities & cap::CONNECT_ATTRS != 0 && !r.is_empty() {
            Some(r.lenenc()?.to_vec())
        } else {
            None
        };
        Ok(HandshakeResponse {
            capabilities,
            max_packet,
            charset,
            user,
            auth_response,
            database,
            auth_plugin,
            attributes,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.user.len() + self.auth_response.len());
        out.extend_from_slice(&self.capabilities.to_le_bytes());
        out.extend_from_slice(&self.max_packet.to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&[0; 23]);
        out.extend_from_slice(&self.user);
        out.push(0);
        if self.capabilities & cap::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_bytes(&mut out, &self.auth_response);
        } else if self.capabilities & cap::SECURE_CONNECTION != 0 {
            let n = self.auth_response.len().min(255);
            out.push(n as u8);
            out.extend_from_slice(self.auth_response.get(..n).unwrap_or_default());
        } else {
            out.extend_from_slice(&self.auth_response);
            out.push(0);
        }
        if self.capabilities & cap::CONNECT_WITH_DB != 0 {
            out.extend_from_slice(self.database.as_deref().unwrap_or_default());
            out.push(0);
        }
        if self.capabilities & cap::PLUGIN_AUTH != 0 {
            out.extend_from_slice(self.auth_plugin.as_deref().unwrap_or_default());
            out.push(0);
        }
        if self.capabilities & cap::CONNECT_ATTRS != 0 {
            put_lenenc_bytes(&mut out, self.attributes.as_deref().unwrap_or_default());
        }
        out
    }

    /// The SSLRequest for these capabilities.
    pub fn ssl_request(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SSL_REQUEST_LEN);
        out.extend_from_slice(&(self.capabilities | cap::SSL).to_le_bytes());
        out.extend_from_slice(&self.max_packet.to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&[0; 23]);
        out
    }
}

/// An OK packet (`0x00`, or `0xFE` where it replaces EOF).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    /// The human-readable info, and any session-state data after it, as sent.
    pub info: Vec<u8>,
}

impl OkPacket {
    pub fn decode(payload: &[u8]) -> Result<OkPacket, MyError> {
        let mut r = Reader::new(payload);
        let h = r.u8()?;
        if h != 0x00 && h != 0xfe {
            return Err(MyError::Invalid("not an OK packet"));
        }
        let affected_rows = r.lenenc_int()?.unwrap_or(0);
        let last_insert_id = r.lenenc_int()?.unwrap_or(0);
        let status = r.u16()?;
        let warnings = r.u16()?;
        Ok(OkPacket {
            affected_rows,
            last_insert_id,
            status,
            warnings,
            info: r.rest().to_vec(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0x00];
        put_lenenc_int(&mut out, self.affected_rows);
        put_lenenc_int(&mut out, self.last_insert_id);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&self.warnings.to_le_bytes());
        out.extend_from_slice(&self.info);
        out
    }
}

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    /// Five characters (`42000`).
    pub sqlstate: [u8; 5],
    pub message: Vec<u8>,
}

impl ErrPacket {
    pub fn new(code: u16, sqlstate: &str, message: &str) -> ErrPacket {
        let mut s = [b'0'; 5];
        for (d, c) in s.iter_mut().zip(sqlstate.bytes()) {
            *d = c;
        }
        ErrPacket {
            code,
            sqlstate: s,
            message: message.as_bytes().to_vec(),
        }
    }

    pub fn decode(payload: &[u8]) -> Result<ErrPacket, MyError> {
        let mut r = Reader::new(payload);
        if r.u8()? != 0xff {
            return Err(MyError::Invalid("not an ERR packet"));
        }
        let code = r.u16()?;
        let mut sqlstate = *b"HY000";
        if r.peek() == Some(b'#') {
            r.u8()?;
            let s = r.bytes(5)?;
            sqlstate.copy_from_slice(s);
        }
        Ok(ErrPacket {
            code,
            sqlstate,
            message: r.rest().to_vec(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(0xff);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.push(b'#');
        out.extend_from_slice(&self.sqlstate);
        out.extend_from_slice(&self.message);
        out
    }

    pub fn sqlstate(&self) -> String {
        String::from_utf8_lossy(&self.sqlstate).into_owned()
    }
}

/// An EOF packet (`0xFE`, shorter than 9 bytes): the end of column definitions or rows when
/// `CLIENT_DEPRECATE_EOF` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EofPacket {
    pub warnings: u16,
    pub status: u16,
}

impl EofPacket {
    /// Whether a payload is an EOF packet (a text row starting with 0xFE is 9 bytes or more).
    pub fn is_eof(payload: &[u8]) -> bool {
        payload.first() == Some(&0xfe) && payload.len() < 9
    }

    pub fn decode(payload: &[u8]) -> Result<EofPacket, MyError> {
        let mut r = Reader::new(payload);
        if r.u8()? != 0xfe {
            return Err(MyError::Invalid("not an EOF packet"));
        }
        Ok(EofPacket {
            warnings: r.u16()?,
            status: r.u16()?,
        })
    }
}

/// What kind of packet answers a command first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    Ok,
    Err,
    /// `LOCAL INFILE` request: the server asks the client for a file.
    LocalInfile,
    /// A result set of this many columns follows.
    Columns(u64),
}

impl First {
    pub fn classify(payload: &[u8]) -> Result<First, MyError> {
        match payload.first() {
            Some(0x00) => Ok(First::Ok),
            Some(0xff) => Ok(First::Err),
            Some(0xfb) => Ok(First::LocalInfile),
            Some(_) => {
                let mut r = Reader::new(payload);
                let n = r
                    .lenenc_int()?
                    .ok_or(MyError::Invalid("column count is NULL"))?;
                if !r.is_empty() && r.remaining() != 1 {
                    // MariaDB may send one metadata-follows byte; nothing else.
                    return Err(MyError::Invalid("trailing bytes after the column count"));
                }
                if n == 0 {
                    return Err(MyError::Invalid("a result set of zero columns"));
                }
                Ok(First::Columns(n))
            }
            None => Err(MyError::Invalid("empty packet")),
        }
    }
}

/// A column definition (`ColumnDefinition41`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnDef {
    pub schema: Vec<u8>,
    pub table: Vec<u8>,
    pub org_table: Vec<u8>,
    pub name: Vec<u8>,
    pub org_name: Vec<u8>,
    pub charset: u16,
    pub length: u32,
    pub column_type: u8,
    pub flags: u16,
    pub decimals: u8,
}

impl ColumnDef {
    pub fn decode(payload: &[u8]) -> Result<ColumnDef, MyError> {
        let mut r = Reader::new(payload);
        let _catalog = r.lenenc()?;
        let schema = r.lenenc()?.to_vec();
        let table = r.lenenc()?.to_vec();
        let org_table = r.lenenc()?.to_vec();
        let name = r.lenenc()?.to_vec();
        let org_name = r.lenenc()?.to_vec();
        let _fixed = r.lenenc_int()?;
        Ok(ColumnDef {
            schema,
            table,
            org_table,
            name,
            org_name,
            charset: r.u16()?,
            length: r.u32()?,
            column_type: r.u8()?,
            flags: r.u16()?,
            decimals: r.u8()?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        put_lenenc_bytes(&mut out, b"def");
        for s in [
            &self.schema,
            &self.table,
            &self.org_table,
            &self.name,
            &self.org_name,
        ] {
            put_lenenc_bytes(&mut out, s);
        }
        out.push(0x0c);
        out.extend_from_slice(&self.charset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.push(self.column_type);
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.push(self.decimals);
        out.extend_from_slice(&[0, 0]);
        out
    }
}

/// The fields of a text-protocol row: each a value or NULL, in column order. Checks that
/// the row has exactly `columns` fields and nothing after them.
pub fn text_row(payload: &[u8], columns: usize) -> Result<Vec<Option<&[u8]>>, MyError> {
    let mut r = Reader::new(payload);
    // Each field takes at least one byte: a count above the bytes present is refused before
    // anything is allocated.
    if columns > payload.len() {
        return Err(MyError::Invalid("row has fewer bytes than columns"));
    }
    let mut fields = Vec::with_capacity(columns);
    for _ in 0..columns {
        fields.push(r.lenenc_bytes()?);
    }
    if !r.is_empty() {
        return Err(MyError::Invalid("trailing bytes after a row's fields"));
    }
    Ok(fields)
}

/// Appends one text-protocol field (NULL is 0xFB).
pub fn put_text_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => put_lenenc_bytes(out, v),
        None => out.push(0xfb),
    }
}

/// A server's request to switch the authentication method (`0xFE`, plugin name, data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitch {
    pub plugin: Vec<u8>,
    pub data: Vec<u8>,
}

impl AuthSwitch {
    pub fn decode(payload: &[u8]) -> Result<AuthSwitch, MyError> {
        let mut r = Reader::new(payload);
        if r.u8()? != 0xfe {
            return Err(MyError::Invalid("not an auth switch request"));
        }
        let plugin = r.nul_str_or_rest().to_vec();
        let data = r.rest();
        let data = data.strip_suffix(&[0]).unwrap_or(data).to_vec();
        Ok(AuthSwitch { plugin, data })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0xfe];
        out.extend_from_slice(&self.plugin);
        out.push(0);
        out.extend_from_slice(&self.data);
        out.push(0);
        out
    }
}
