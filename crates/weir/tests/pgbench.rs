//! pgbench through the gateway: select-only and TPC-B-like, in all three query modes,
//! with zero failed transactions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

fn pgbench(g: &Gateway, args: &[&str]) -> String {
    let out = std::process::Command::new(g.cluster.bindir().join("pgbench"))
        .args(args)
        .arg(g.alice())
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[test]
fn pgbench_all_modes_no_failures() {
    let g = Gateway::start();
    pgbench(&g, &["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &[][..]] {
            let mut args = vec!["-n", "-c", "4", "-j", "2", "-t", "200", "-M", mode];
            args.extend_from_slice(script);
            let text = pgbench(&g, &args);
            assert!(
                text.contains("number of transactions actually processed: 800/800"),
                "{mode} {script:?}:\n{text}"
            );
            assert!(
                !text.contains("number of failed transactions: ")
                    || text.contains("number of failed transactions: 0 "),
                "{text}"
            );
        }
    }
}
