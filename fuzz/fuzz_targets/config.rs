//! The config loader on arbitrary text: any TOML (or not) must give a config or an error that
//! names the file, never a panic.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = weir_config::Config::parse(Path::new("/nonexistent/weir-fuzz/weir.toml"), text) {
        let _ = e.to_string();
    }
});
