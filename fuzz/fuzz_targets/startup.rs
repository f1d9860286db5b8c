//! Startup packets: length check → decode → encode must give back the same bytes.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use weir_wire::startup::StartupPacket;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(len)) = StartupPacket::frame_len(data) else { return };
    let Some(frame) = data.get(..len) else { return };
    if let Ok(packet) = StartupPacket::decode(Bytes::copy_from_slice(frame)) {
        let mut out = BytesMut::new();
        packet.encode(&mut out);
        assert_eq!(&out[..], frame, "{packet:?}");
    }
});
