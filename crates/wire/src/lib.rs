//! PostgreSQL wire protocol (v3) codec for Weir.
//!
//! This crate turns bytes into typed messages and back, and nothing else: it knows nothing
//! about sockets, tokio, identities or policy. Everything here is a plain function over byte
//! slices so that it can be unit-tested and fuzzed alone.
//!
//! Design decisions:
//! - **The peer's lengths are never trusted.** Every length is checked against the bytes that
//!   are actually there and against a configured maximum *before* anything is allocated
//!   ([`frame::Header::parse`]). Decoding never panics and never indexes unchecked.
//! - **Direction is part of the type.** The same tag byte means different things from the
//!   client and from the server, so there are two message enums, [`frontend::Message`] and
//!   [`backend::Message`], plus [`startup::StartupPacket`] for the untagged first packet.
//! - **Need-more-bytes is not an error.** Framing returns `Ok(None)` when a frame is incomplete
//!   and `Err` only when the bytes can never become valid.
//! - **Round trip.** For every message `decode(encode(m)) == m`, and for canonical input
//!   `encode(decode(b)) == b`; the fuzz targets assert the latter.

pub mod backend;
mod cursor;
pub mod frame;
pub mod frontend;
pub mod mysql;
pub mod scram;
pub mod startup;

pub use cursor::Cursor;
pub use frame::Header;

/// Default upper bound for one protocol message, in bytes (64 MiB).
///
/// PostgreSQL itself accepts up to 1 GiB per field, but a gateway that holds one message per
/// direction per session in memory cannot let a peer choose that: 1,000 sessions at 1 GiB is a
/// terabyte. 64 MiB is far above what drivers send in practice (large bulk loads go through
/// COPY, which streams in small CopyData messages) and keeps the worst case per session small.
/// Operators who store larger single values raise `[gateway] max_message_size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Largest startup packet PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH` in the server).
pub const MAX_STARTUP_PACKET_SIZE: usize = 10_000;

/// Most parameters Weir accepts in one startup packet. Real clients send fewer than 20.
pub const MAX_STARTUP_PARAMS: usize = 64;

/// An input that can never become a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message length {len} is below the minimum of 4")]
    LengthTooSmall { len: i64 },
    #[error("message length {len} exceeds the maximum of {max} bytes")]
    LengthTooLarge { len: u64, max: usize },
    #[error("message '{tag}' ends early: wanted {wanted} more bytes")]
    Truncated { tag: char, wanted: usize },
    #[error("message '{tag}' has {extra} unexpected trailing bytes")]
    TrailingBytes { tag: char, extra: usize },
    #[error("string in message '{tag}' is not NUL-terminated")]
    UnterminatedString { tag: char },
    #[error("unknown {direction} message tag 0x{tag:02x}")]
    UnknownTag { tag: u8, direction: &'static str },
    #[error("negative count {count} in message '{tag}'")]
    NegativeCount { tag: char, count: i64 },
    #[error("invalid value in message '{tag}': {what}")]
    Invalid { tag: char, what: &'static str },
    #[error("startup packet has more than {max} parameters")]
    TooManyParameters { max: usize },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
}

/// Turns a tag byte into a printable char for error messages.
pub(crate) fn tag_char(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}
