//! The masker on what a hostile or broken server could send: any sequence of RowDescription,
//! DataRow, CopyOutResponse, CopyData, ErrorResponse and NoticeResponse bodies, answering a
//! simple query, an Execute in text or binary format, or a COPY. It must never panic, and a
//! row it rewrites must be a well-formed DataRow with the same number of values.
#![no_main]
use std::sync::LazyLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_analyze::{Analyzer, StatementFacts};
use weir_mask::{Answering, Catalog, CatalogRow, Env, HashKey, Masker, NeverUnmask, Rewrite, Rules};
use weir_wire::backend::Message as Backend;

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    let mut rows = Vec::new();
    for (oid, table, cols, row_types) in [
        (16400u32, "customers", &["id", "email", "ssn", "card_number", "notes"][..], [16402u32, 16401]),
        (16410, "person", &["nick", "ssn"][..], [16411, 16412]),
        (16420, "holders", &["id", "who"][..], [16421, 16422]),
    ] {
        for (i, c) in cols.iter().enumerate() {
            rows.push(CatalogRow {
                type_oid: if *c == "who" { 16411 } else { 25 },
                row_types,
                unique_keys: if *c == "id" { vec![(oid + 5, 1)] } else { Vec::new() },
                ..CatalogRow::column(oid, i as i16 + 1, "public", table, c)
            });
        }
    }
    Catalog::build(rows, &Rules::default())
});

static FACTS: LazyLock<Vec<StatementFacts>> = LazyLock::new(|| {
    let a = Analyzer::new();
    let mut out = Vec::new();
    for sql in [
        "SELECT c, email, count(ssn), upper(notes) FROM public.customers c",
        "COPY public.customers TO STDOUT",
        "COPY (SELECT email, ssn FROM public.customers) TO STDOUT (FORMAT csv, DELIMITER ';')",
        "COPY public.customers TO STDOUT (FORMAT binary)",
        "SELECT who, h FROM public.holders h",
    ] {
        if let Ok(an) = a.analyze(sql.as_bytes()) {
            out.extend(an.statements.iter().cloned());
        }
    }
    out
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let facts = &FACTS[..];
    let one = facts.get(usize::from(mode >> 4) % facts.len().max(1));
    let formats: &[i16] = match mode & 3 {
        0 => &[],
        1 => &[1],
        2 => &[0, 1],
        _ => &[1, 0, 1, 1],
    };
    let mut masker = Masker::new(HashKey::new(b"fuzz"));
    let env = Env { catalog: &CATALOG, unmask: &NeverUnmask };
    // Frames: a tag byte, a 2-byte length, that many body bytes.
    while let [tag, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let tag = match tag % 7 {
            0 => b'T',
            1 | 2 => b'D',
            3 => b'H',
            4 => b'd',
            5 => b'E',
            _ => b'N',
        };
        let answering = match mode & 12 {
            0 => Answering::Query(facts),
            4 => Answering::Execute { statement: Some(b"s"), formats, facts: one },
            8 => Answering::Execute { statement: None, formats, facts: None },
            _ => Answering::Query(one.map(std::slice::from_ref).unwrap_or(&[])),
        };
        let rewrite = masker.on_message(answering, env, tag, body);
        if let (b'D', Rewrite::Replace(frame)) = (tag, rewrite) {
            let frame = frame.freeze();
            assert_eq!(frame.first(), Some(&b'D'));
            let Ok(Backend::DataRow(values)) = Backend::decode(b'D', frame.slice(5..)) else {
                panic!("a rewritten row does not decode: {frame:?}");
            };
            if let Ok(Backend::DataRow(original)) = Backend::decode(b'D', Bytes::copy_from_slice(body)) {
                assert_eq!(values.len(), original.len(), "a rewritten row lost or gained values");
            }
        }
    }
});
