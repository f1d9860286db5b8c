//! The MySQL codec on arbitrary bytes: no decoder may panic, and what decodes re-encodes to
//! something that decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_wire::mysql::{
    binary_row, put_binary_row, text_row, AuthSwitch, ColumnDef, EofPacket, ErrPacket, First, Handshake, HandshakeResponse,
    OkPacket, PrepareOk,
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
    let _ = PrepareOk::decode(data);
    // A binary row read with column types taken from the input's first bytes re-encodes to
    // the same bytes.
    if let Some((&k, rest)) = data.split_first() {
        let k = usize::from(k % 8).min(rest.len());
        let (types, row) = rest.split_at(k);
        if let Ok(values) = binary_row(row, types) {
            let mut out = Vec::new();
            put_binary_row(&mut out, &values);
            assert_eq!(binary_row(&out, types).ok(), Some(values));
        }
    }
});
