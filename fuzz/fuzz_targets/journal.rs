//! The audit journal's segment reader on arbitrary bytes (a segment torn by a crash, or
//! altered on disk): it must stop at the first frame it cannot read, never panic, and never
//! allocate more than the bytes it was given can hold.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (records, cp) in weir_store::journal::decode_segment(data) {
        assert!(records.iter().all(|r| r.body.len() <= data.len()));
        let _ = cp.seq;
    }
});
