//! The result stage per row: a six-column row (id, name, email, card_number, created, note)
//! of a table whose email and card_number are masked by name, and whose two other text
//! columns are scanned by content. Compared with a row of a table with nothing sensitive
//! (every text column still scanned) and with the DataRow walk alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_mask::{
    Answering, Catalog, CatalogRow, Env, HashKey, Masker, NeverUnmask, Rewrite, Rules,
};
use weir_wire::backend::{FieldDescription, Message};

fn row(values: &[&str]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(values.len() as i16);
    for v in values {
        b.put_i32(v.len() as i32);
        b.put_slice(v.as_bytes());
    }
    b
}

fn description(table_oid: u32) -> BytesMut {
    let ty = [20u32, 25, 25, 25, 1184, 25];
    let names = ["id", "name", "email", "card_number", "created", "note"];
    let fields = names
        .iter()
        .zip(ty)
        .enumerate()
        .map(|(i, (n, t))| FieldDescription {
            name: bytes::Bytes::from_static(n.as_bytes()),
            table_oid,
            column: i as i16 + 1,
            type_oid: t,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        })
        .collect();
    let mut out = BytesMut::new();
    Message::RowDescription(fields).encode(&mut out);
    out.split_off(5)
}

fn catalog() -> Catalog {
    let cols = ["id", "name", "email", "card_number", "created", "note"];
    let mut rows = Vec::new();
    for (oid, table, names) in [
        (100u32, "people", cols),
        (
            200u32,
            "orders",
            ["id", "label", "ref", "code", "created", "note"],
        ),
    ] {
        for (i, c) in names.iter().enumerate() {
            rows.push(CatalogRow::column(oid, i as i16 + 1, "public", table, c));
        }
    }
    Catalog::build(rows, &Rules::default())
}

fn bench(c: &mut Criterion) {
    let catalog = catalog();
    let env = Env {
        catalog: &catalog,
        unmask: &NeverUnmask,
    };
    let data = row(&[
        "42",
        "Person 42",
        "person42@example.com",
        "4111 1111 1111 0042",
        "2024-01-01 00:42:00+00",
        "order 42 shipped to the warehouse",
    ]);
    let plain = row(&[
        "42",
        "Order 42",
        "REF-0042",
        "SKU-12345-XL",
        "2024-01-01 00:42:00+00",
        "order 42 shipped to the warehouse",
    ]);
    let mut g = c.benchmark_group("mask");
    g.throughput(Throughput::Elements(1));
    for (name, oid, data) in [
        ("row with 2 masked, 2 scanned", 100u32, &data),
        ("row with nothing sensitive, 4 scanned", 200, &plain),
    ] {
        let mut m = Masker::new(HashKey::new(b"k"));
        m.on_message(Answering::Query(&[]), env, b'T', &description(oid));
        g.bench_function(name, |b| {
            b.iter(
                || match m.on_message(Answering::Query(&[]), env, b'D', data) {
                    Rewrite::Replace(r) => r.len(),
                    _ => 0,
                },
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
