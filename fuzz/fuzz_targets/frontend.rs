//! Frontend messages: frame → decode → encode must give back the same bytes.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use weir_wire::frontend::Message;
use weir_wire::Header;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(h)) = Header::parse(data, 1 << 20) else { return };
    let Some(frame) = data.get(..h.frame_len()) else { return };
    let body = Bytes::copy_from_slice(&frame[Header::SIZE..]);
    if let Ok(msg) = Message::decode(h.tag, body) {
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(&out[..], frame, "{msg:?}");
    }
});
