//! The per-message work on the gateway's hot path: framing a buffer of server messages (what
//! the backend half does for every read) and decoding client messages (what the frontend half
//! does for every request).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_wire::backend::Message as Backend;
use weir_wire::frontend::{Bind, Message as Frontend, Parse};
use weir_wire::{Header, DEFAULT_MAX_MESSAGE_SIZE};

fn datarows(n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for i in 0..n {
        Backend::DataRow(vec![
            Some(Bytes::from(i.to_string())),
            Some(Bytes::from_static(b"ada.lovelace@example.com")),
            None,
        ])
        .encode(&mut buf);
    }
    buf
}

fn framing(c: &mut Criterion) {
    let buf = datarows(1000);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("walk 1000 DataRow frames", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0;
            while let Ok(Some(h)) = Header::parse(&buf[at..], DEFAULT_MAX_MESSAGE_SIZE) {
                at += h.frame_len();
                n += 1;
                if at >= buf.len() {
                    break;
                }
            }
            n
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut query = BytesMut::new();
    Frontend::Query(Bytes::from_static(
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    ))
    .encode(&mut query);
    let mut batch = BytesMut::new();
    Frontend::Parse(Parse {
        name: Bytes::from_static(b"P0_1"),
        query: Bytes::from_static(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
        param_types: vec![23],
    })
    .encode(&mut batch);
    Frontend::Bind(Bind {
        portal: Bytes::new(),
        statement: Bytes::from_static(b"P0_1"),
        param_formats: vec![1],
        params: vec![Some(Bytes::from_static(&[0, 0, 0xbc, 0xa5]))],
        result_formats: vec![1],
    })
    .encode(&mut batch);
    Frontend::Execute {
        portal: Bytes::new(),
        max_rows: 0,
    }
    .encode(&mut batch);
    Frontend::Sync.encode(&mut batch);
    let (query, batch) = (query.freeze(), batch.freeze());

    let mut g = c.benchmark_group("decode");
    g.bench_function("Query", |b| {
        b.iter(|| {
            let h = Header::parse(&query, DEFAULT_MAX_MESSAGE_SIZE)
                .unwrap()
                .unwrap();
            Frontend::decode(h.tag, query.slice(Header::SIZE..h.frame_len())).unwrap()
        })
    });
    g.bench_function("Parse+Bind+Execute+Sync", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0;
            while let Ok(Some(h)) = Header::parse(&batch[at..], DEFAULT_MAX_MESSAGE_SIZE) {
                Frontend::decode(h.tag, batch.slice(at + Header::SIZE..at + h.frame_len()))
                    .unwrap();
                at += h.frame_len();
                n += 1;
                if at >= batch.len() {
                    break;
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, framing, decode);
criterion_main!(benches);
