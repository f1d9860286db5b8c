//! The statement analyzer on arbitrary text: it must never panic, and what its cache hands out
//! must be exactly what a fresh analysis finds (texts that differ only in constants share
//! cache entries, so a wrong entry would give one statement another's facts).
#![no_main]
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use weir_analyze::{postgres, Analyzer, Scope};

/// One analyzer for the whole run, so its cache fills with what the fuzzer tried before.
static ANALYZER: LazyLock<Analyzer> = LazyLock::new(Analyzer::new);

fuzz_target!(|data: &[u8]| {
    let Ok(cached) = ANALYZER.analyze(data) else { return };
    let text = std::str::from_utf8(data).expect("analyzed text is UTF-8");
    let fresh = postgres::analyze_sql(text).expect("a cached analysis parses afresh");
    assert_eq!(&cached.statements[..], &fresh[..], "{text:?}");
    // The session layer on top: resolving and observing must not panic either.
    let scope = Scope::new("app", Some("\"$user\", public"));
    let scope = scope.after(&cached).unwrap_or(scope);
    let _ = scope.resolve(&cached.statements);
});
