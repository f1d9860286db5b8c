//! The MySQL codec on arbitrary bytes: no decoder may panic, and what decodes re-encodes to
//! something that decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_wire::mysql::{
    text_row, AuthSwitch, ColumnDef, EofPacket, ErrPacket, First, Handshake, HandshakeResponse,
    OkPacket,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Handshake::decode(data) {
        if h.auth_data.len() >= 20 {
            assert_eq!(Handshake::decode(&h.encode()).ok().map(|d| d.server_version), Some(h.server_version));
        }
    }
    if let Ok(r) = HandshakeResponse::decode(data) {
        if r.auth_response.len() < 251 && !r.auth_response.contains(&0) && !r.user.contains(&0) {
            let again = HandshakeResponse::decode(&r.encode()).ok();
            assert_eq!(again.map(|a| (a.user, a.auth_response)), Some((r.user, r.auth_response)));
        }
    }
    let _ = HandshakeResponse::is_ssl_request(data);
    if let Ok(ok) = OkPacket::decode(data) {
        if data.first() == Some(&0) {
            assert_eq!(OkPacket::decode(&ok.encode()).ok(), Some(ok));
        }
    }
    if let Ok(e) = ErrPacket::decode(data) {
        assert_eq!(ErrPacket::decode(&e.encode()).ok().map(|d| d.code), Some(e.code));
    }
    let _ = EofPacket::decode(data);
    let _ = First::classify(data);
    if let Ok(c) = ColumnDef::decode(data) {
        assert_eq!(ColumnDef::decode(&c.encode()).ok(), Some(c));
    }
    let _ = AuthSwitch::decode(data);
    for n in [1usize, 3, 17, data.len()] {
        let _ = text_row(data, n);
    }
});
