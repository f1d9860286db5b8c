//! The untagged first packet a client sends: a startup message, or a request for TLS,
//! GSSAPI encryption or cancellation.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::put_cstr;
use crate::{Cursor, WireError, MAX_STARTUP_PACKET_SIZE, MAX_STARTUP_PARAMS};

pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: i32,
        /// 4 bytes for protocol 3.0; longer keys are allowed by protocol 3.2.
        secret_key: Bytes,
    },
    Startup {
        /// Minor version of protocol 3 that the client asked for.
        minor: u16,
        /// Parameters in the order the client sent them; names are unique.
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// Reads the four-byte length at the start of `buf`. `Ok(None)` until four bytes are
    /// there; lengths outside 8..=10,000 are rejected before anything is allocated.
    pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(&[a, b, c, d]) = buf.get(..4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([a, b, c, d]);
        if len < 8 {
            return Err(WireError::LengthTooSmall {
                len: i64::from(len),
            });
        }
        let len = len.unsigned_abs() as usize;
        if len > MAX_STARTUP_PACKET_SIZE {
            return Err(WireError::LengthTooLarge {
                len: len as u64,
                max: MAX_STARTUP_PACKET_SIZE,
            });
        }
        Ok(Some(len))
    }

    /// Decodes a complete packet, length prefix included.
    pub fn decode(frame: Bytes) -> Result<StartupPacket, WireError> {
        let mut c = Cursor::new(0, frame);
        let _len = c.i32()?;
        let code = c.i32()?;
        let packet = match code {
            SSL_REQUEST_CODE => StartupPacket::SslRequest,
            GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
            CANCEL_REQUEST_CODE => {
                let process_id = c.i32()?;
                let secret_key = c.rest();
                if secret_key.len() < 4 || secret_key.len() > 256 {
                    return Err(WireError::Invalid {
                        tag: '?',
                        what: "cancel key length",
                    });
                }
                StartupPacket::Cancel {
                    process_id,
                    secret_key,
                }
            }
            version => {
                let major = (version >> 16) as u16;
                let minor = (version & 0xffff) as u16;
                if major != 3 {
                    return Err(WireError::UnsupportedVersion { major, minor });
                }
                let mut params: Vec<(String, String)> = Vec::new();
                loop {
                    let name = c.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    if params.len() >= MAX_STARTUP_PARAMS {
                        return Err(WireError::TooManyParameters {
                            max: MAX_STARTUP_PARAMS,
                        });
                    }
                    let value = c.cstr()?;
                    let name = utf8(name)?;
                    let value = utf8(value)?;
                    if params.iter().any(|(n, _)| *n == name) {
                        return Err(WireError::Invalid {
                            tag: '?',
                            what: "duplicate startup parameter",
                        });
                    }
                    params.push((name, value));
                }
                StartupPacket::Startup { minor, params }
            }
        };
        c.finish()?;
        Ok(packet)
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let at = out.len();
        out.put_i32(0);
        match self {
            StartupPacket::SslRequest => out.put_i32(SSL_REQUEST_CODE),
            StartupPacket::GssEncRequest => out.put_i32(GSSENC_REQUEST_CODE),
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                out.put_i32(CANCEL_REQUEST_CODE);
                out.put_i32(*process_id);
                out.put_slice(secret_key);
            }
            StartupPacket::Startup { minor, params } => {
                out.put_i32((3 << 16) | i32::from(*minor));
                for (k, v) in params {
                    put_cstr(out, k.as_bytes());
                    put_cstr(out, v.as_bytes());
                }
                out.put_u8(0);
            }
        }
        let len = i32::try_from(out.len() - at).unwrap_or(i32::MAX);
        if let Some(slot) = out.get_mut(at..at + 4) {
            slot.copy_from_slice(&len.to_be_bytes());
        }
    }

    /// The value of a startup parameter, for [`StartupPacket::Startup`].
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            StartupPacket::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

fn utf8(b: Bytes) -> Result<String, WireError> {
    String::from_utf8(b.to_vec()).map_err(|_| WireError::Invalid {
        tag: '?',
        what: "startup parameter is not UTF-8",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: StartupPacket) {
        let mut out = BytesMut::new();
        p.encode(&mut out);
        assert_eq!(StartupPacket::frame_len(&out), Ok(Some(out.len())));
        assert_eq!(StartupPacket::decode(out.freeze()), Ok(p));
    }

    #[test]
    fn packets_roundtrip() {
        roundtrip(StartupPacket::SslRequest);
        roundtrip(StartupPacket::GssEncRequest);
        roundtrip(StartupPacket::Cancel {
            process_id: 42,
            secret_key: Bytes::from_static(&[1, 2, 3, 4]),
        });
        roundtrip(StartupPacket::Startup {
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "shop".into()),
            ],
        });
    }

    #[test]
    fn ten_thousand_parameters_are_rejected() {
        let mut body = BytesMut::new();
        body.put_i32(0);
        body.put_i32(PROTOCOL_3_0);
        for i in 0..10_000 {
            put_cstr(&mut body, format!("p{i}").as_bytes());
            put_cstr(&mut body, b"v");
        }
        body.put_u8(0);
        // The length alone rules it out before anything is parsed.
        let len = i32::try_from(body.len()).unwrap_or(i32::MAX);
        body[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            StartupPacket::frame_len(&body),
            Err(WireError::LengthTooLarge { .. })
        ));
        // And a packet that fits the size but not the count is refused by the count.
        let mut small = BytesMut::new();
        small.put_i32(0);
        small.put_i32(PROTOCOL_3_0);
        for i in 0..100 {
            put_cstr(&mut small, format!("{i}").as_bytes());
            put_cstr(&mut small, b"");
        }
        small.put_u8(0);
        assert_eq!(
            StartupPacket::decode(small.freeze()),
            Err(WireError::TooManyParameters {
                max: MAX_STARTUP_PARAMS
            })
        );
    }

    #[test]
    fn undersized_length_is_rejected() {
        assert_eq!(
            StartupPacket::frame_len(&[0, 0, 0, 3]),
            Err(WireError::LengthTooSmall { len: 3 })
        );
    }

    #[test]
    fn protocol_2_is_rejected() {
        let mut b = BytesMut::new();
        b.put_i32(8);
        b.put_i32(2 << 16);
        assert_eq!(
            StartupPacket::decode(b.freeze()),
            Err(WireError::UnsupportedVersion { major: 2, minor: 0 })
        );
    }
}
