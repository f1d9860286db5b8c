//! MySQL client/server protocol (protocol 41) codec: framing, the handshake, OK / ERR / EOF,
//! column definitions, text rows, and the password scrambles.
//!
//! Same rules as the PostgreSQL side: plain functions over byte slices, no sockets, every
//! length checked against the bytes present ([`Reader`]), nothing panics on any input. A
//! logical packet is assembled by the caller from 4-byte-header frames ([`Header`]), bounded by
//! the caller's maximum before anything is allocated.

mod auth;
mod binary;
mod packets;
mod reader;

pub use auth::{caching_sha2_scramble, native_scramble};
pub use binary::*;
pub use packets::*;
pub use reader::{put_lenenc_bytes, put_lenenc_int, Reader};

/// The largest payload one frame carries; a logical packet of this size or more continues
/// in the next frame.
pub const MAX_FRAME_PAYLOAD: usize = 0xFF_FFFF;

/// Why bytes can never become a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MyError {
    #[error("MySQL packet ends early: wanted {wanted} more bytes")]
    Truncated { wanted: usize },
    #[error("MySQL packet of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("invalid MySQL packet: {0}")]
    Invalid(&'static str),
    #[error("MySQL packet out of sequence: expected {expected}, got {got}")]
    Sequence { expected: u8, got: u8 },
}

/// A frame's 4-byte header: 3 bytes of payload length (little endian) and a sequence id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub seq: u8,
}

impl Header {
    pub fn parse(b: [u8; 4]) -> Header {
        Header {
            len: usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16,
            seq: b[3],
        }
    }

    /// Whether the logical packet continues in the next frame.
    pub fn continues(self) -> bool {
        self.len == MAX_FRAME_PAYLOAD
    }
}

/// Appends `payload` to `out` as frames starting at sequence id `seq`; returns the next
/// sequence id. A payload that is a multiple of the frame size ends with an empty frame, as
/// the protocol requires.
pub fn frame(mut seq: u8, payload: &[u8], out: &mut Vec<u8>) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME_PAYLOAD);
        let (chunk, tail) = rest.split_at(n);
        let len = n as u32;
        out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]);
        out.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
        rest = tail;
        if n < MAX_FRAME_PAYLOAD {
            return seq;
        }
    }
}

/// Capability flags (`CLIENT_*`).
pub mod cap {
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const ODBC: u32 = 1 << 6;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const IGNORE_SIGPIPE: u32 = 1 << 12;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const RESERVED: u32 = 1 << 14;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;
}

/// Server status flags (`SERVER_*`) in OK and EOF packets.
pub mod status {
    pub const IN_TRANS: u16 = 1;
    pub const AUTOCOMMIT: u16 = 1 << 1;
    pub const MORE_RESULTS_EXISTS: u16 = 1 << 3;
    pub const NO_GOOD_INDEX_USED: u16 = 1 << 4;
    pub const NO_INDEX_USED: u16 = 1 << 5;
    pub const CURSOR_EXISTS: u16 = 1 << 6;
    pub const LAST_ROW_SENT: u16 = 1 << 7;
    pub const NO_BACKSLASH_ESCAPES: u16 = 1 << 9;
    pub const SESSION_STATE_CHANGED: u16 = 1 << 14;
}

/// Command bytes (`COM_*`): the first byte of every client packet after the handshake.
pub mod com {
    pub const SLEEP: u8 = 0x00;
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;
}

/// Column types (`MYSQL_TYPE_*`) that matter to masking.
pub mod column_type {
    pub const DECIMAL: u8 = 0x00;
    pub const TINY: u8 = 0x01;
    pub const SHORT: u8 = 0x02;
    pub const LONG: u8 = 0x03;
    pub const FLOAT: u8 = 0x04;
    pub const DOUBLE: u8 = 0x05;
    pub const NULL: u8 = 0x06;
    pub const TIMESTAMP: u8 = 0x07;
    pub const LONGLONG: u8 = 0x08;
    pub const INT24: u8 = 0x09;
    pub const DATE: u8 = 0x0a;
    pub const TIME: u8 = 0x0b;
    pub const DATETIME: u8 = 0x0c;
    pub const YEAR: u8 = 0x0d;
    pub const VARCHAR: u8 = 0x0f;
    pub const BIT: u8 = 0x10;
    pub const JSON: u8 = 0xf5;
    pub const NEWDECIMAL: u8 = 0xf6;
    pub const ENUM: u8 = 0xf7;
    pub const SET: u8 = 0xf8;
    pub const TINY_BLOB: u8 = 0xf9;
    pub const MEDIUM_BLOB: u8 = 0xfa;
    pub const LONG_BLOB: u8 = 0xfb;
    pub const BLOB: u8 = 0xfc;
    pub const VAR_STRING: u8 = 0xfd;
    pub const STRING: u8 = 0xfe;
    pub const GEOMETRY: u8 = 0xff;

    /// Whether values of the type are strings (text or bytes) that a masking strategy can
    /// rewrite and keep valid; other types are masked as NULL.
    pub fn is_string(t: u8) -> bool {
        matches!(
            t,
            VARCHAR
                | JSON
                | ENUM
                | SET
                | TINY_BLOB
                | MEDIUM_BLOB
                | LONG_BLOB
                | BLOB
                | VAR_STRING
                | STRING
        )
    }
}

#[cfg(test)]
mod tests;
