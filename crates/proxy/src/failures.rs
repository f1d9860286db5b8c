//! Failed logins, recorded without letting anyone flood the trail with them.
//!
//! Every failed login used to be one durable audit event, written (fsync'd) before the client
//! got its error. Anyone who can reach the port could make Weir write the disk as fast as they
//! could connect: a cheap way to fill the trail, burn the disk's flushes that statements wait
//! for, and bury the attempts that matter. So, per source (an IPv4 address or an IPv6 /64), the
//! first [`RECORDED_PER_WINDOW`] failures of a minute are recorded one by one as they always
//! were, and at most [`RECORDED_PER_WINDOW_IN_ALL`] from all sources together; the rest are
//! counted, and one `auth_throttled` event per source says how many and which user names they
//! tried (up to 10), when its minute is over: at the source's next failure, at the sweep every
//! minute, or at shutdown. Nothing is refused because of it: tokens carry 256 bits and ID
//! tokens are signed, so there is nothing to guess — only the record is condensed.
//!
//! Memory is bounded: at most [`MAX_ADDRESSES`] sources are tracked; beyond that, failures
//! from new sources are counted under one shared entry (`*`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

use weir_audit::Event;
use weir_store::Clock;

/// Failures from one address recorded one by one per window.
pub const RECORDED_PER_WINDOW: u32 = 20;
/// Failures recorded one by one per window from all addresses together: many addresses (an
/// IPv6 range, a botnet) cannot add up to a flood either.
pub const RECORDED_PER_WINDOW_IN_ALL: u32 = 1_000;
/// The window, in milliseconds.
pub const WINDOW_MS: u64 = 60_000;
/// Addresses tracked at once.
pub const MAX_ADDRESSES: usize = 10_000;
/// User names kept per window for its summary, and the characters kept of each.
const NAMES_PER_WINDOW: usize = 10;
const NAME_CHARS: usize = 64;

/// Where failures are counted: an IPv4 address, an IPv6 /64 (what one host or site usually
/// gets, so rotating through it changes nothing), or the shared entry when the table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(std::net::Ipv4Addr),
    V6Net(Ipv6Addr),
    Overflow,
}

impl Source {
    fn of(addr: IpAddr) -> Source {
        match addr.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                Source::V6Net(Ipv6Addr::from(bits))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::V4(a) => a.to_string(),
            Source::V6Net(net) => format!("{net}/64"),
            Source::Overflow => "*".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Window {
    start_ms: u64,
    failures: u32,
    recorded: u32,
    /// Distinct user names tried among the failures not recorded one by one.
    names: Vec<String>,
}

/// What to record for a failed login.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Record this failure as its own `auth_failed` event (else: counted for its window's
    /// summary).
    pub record: bool,
    /// Summaries of windows that ended, to record (before this failure, if it is recorded).
    pub summaries: Vec<Event>,
}

#[derive(Default)]
struct State {
    windows: HashMap<Source, Window>,
    /// All addresses together: (window start, recorded in it).
    all: (u64, u32),
    /// When the table was last swept for room (at most once a second).
    swept_ms: u64,
}

/// Failed logins per client address.
pub struct FailedLogins {
    clock: Clock,
    state: Mutex<State>,
}

impl FailedLogins {
    pub fn new(clock: Clock) -> FailedLogins {
        FailedLogins {
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// A login from `addr`, as `claimed`, failed: is it recorded?
    pub fn failed(&self, addr: IpAddr, claimed: &str) -> Verdict {
        let now = self.clock.now_ms();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        let mut summaries = Vec::new();
        let mut source = Source::of(addr);
        if !state.windows.contains_key(&source) && state.windows.len() >= MAX_ADDRESSES {
            // Full: make room from ended windows (a scan of the table, so at most once a
            // second); still full, count under the shared entry.
            if now.saturating_sub(state.swept_ms) >= 1000 {
                state.swept_ms = now;
                summaries = sweep(&mut state.windows, now, false);
            }
            if state.windows.len() >= MAX_ADDRESSES {
                source = Source::Overflow;
            }
        }
        if now.saturating_sub(state.all.0) >= WINDOW_MS {
            state.all = (now, 0);
        }
        let w = state.windows.entry(source).or_insert_with(|| Window {
            start_ms: now,
            ..Window::default()
        });
        if now.saturating_sub(w.start_ms) >= WINDOW_MS {
            summaries.extend(summary(source, w));
            *w = Window {
                start_ms: now,
                ..Window::default()
            };
        }
        w.failures = w.failures.saturating_add(1);
        let record = w.recorded < RECORDED_PER_WINDOW && state.all.1 < RECORDED_PER_WINDOW_IN_ALL;
        if record {
            w.recorded += 1;
            state.all.1 += 1;
        } else if w.names.len() < NAMES_PER_WINDOW && !w.names.iter().any(|n| n == claimed) {
            w.names.push(claimed.chars().take(NAME_CHARS).collect());
        }
        Verdict { record, summaries }
    }

    /// Forgets windows that ended, returning the summaries of those that counted failures
    /// without recording them. Run every minute.
    pub fn sweep(&self) -> Vec<Event> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        sweep(&mut state.windows, now, false)
    }

    /// Forgets every window, ended or not, returning their summaries: at shutdown, so no
    /// count is lost.
    pub fn drain(&self) -> Vec<Event> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        sweep(&mut state.windows, now, true)
    }
}

fn sweep(windows: &mut HashMap<Source, Window>, now: u64, all: bool) -> Vec<Event> {
    let mut out = Vec::new();
    windows.retain(|source, w| {
        if !all && now.saturating_sub(w.start_ms) < WINDOW_MS {
            return true;
        }
        out.extend(summary(*source, w));
        false
    });
    out
}

fn summary(source: Source, w: &Window) -> Option<Event> {
    let failures = w.failures.saturating_sub(w.recorded);
    (failures > 0).then(|| Event::AuthThrottled {
        client_addr: source.describe(),
        failures: u64::from(failures),
        window_secs: WINDOW_MS / 1000,
        claimed: w.names.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(dir: &std::path::Path, offset_s: i64) -> Clock {
        let file = dir.join("clock");
        std::fs::write(&file, offset_s.to_string()).unwrap();
        Clock::from_file(file)
    }

    fn recorded(summaries: Vec<Event>) -> Verdict {
        Verdict {
            record: true,
            summaries,
        }
    }

    #[test]
    fn past_the_limit_failures_are_counted_and_summed_up_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = clock(dir.path(), 0);
        let f = FailedLogins::new(c);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..RECORDED_PER_WINDOW {
            assert_eq!(f.failed(a, "mallory"), recorded(vec![]));
        }
        for _ in 0..5 {
            assert_eq!(
                f.failed(a, "mallory"),
                Verdict {
                    record: false,
                    summaries: vec![]
                }
            );
        }
        // Another address has its own window.
        assert_eq!(f.failed(b, "eve"), recorded(vec![]));
        assert!(f.sweep().is_empty(), "the window is not over");

        // A minute later: a's next failure is recorded after the summary of its last window.
        std::fs::write(dir.path().join("clock"), "61").unwrap();
        assert_eq!(
            f.failed(a, "mallory"),
            recorded(vec![Event::AuthThrottled {
                client_addr: "192.0.2.7".into(),
                failures: 5,
                window_secs: 60,
                claimed: vec!["mallory".into()],
            }])
        );
        // b's window counted nothing beyond the limit: the sweep forgets it silently.
        assert!(f.sweep().is_empty());
        for _ in 0..RECORDED_PER_WINDOW + 2 {
            f.failed(b, "eve");
        }
        std::fs::write(dir.path().join("clock"), "122").unwrap();
        let swept = f.sweep();
        assert_eq!(swept.len(), 1, "{swept:?}");
        assert_eq!(f.state.lock().unwrap().windows.len(), 0);
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_shutdown_loses_no_count() {
        let dir = tempfile::tempdir().unwrap();
        let f = FailedLogins::new(clock(dir.path(), 0));
        // Rotating through one /64 changes nothing; an IPv4-mapped address is its IPv4 one.
        for i in 0..RECORDED_PER_WINDOW + 3 {
            let a: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            let v = f.failed(a, &format!("user{}", i % 12));
            assert_eq!(v.record, i < RECORDED_PER_WINDOW, "{i}");
        }
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert!(f.failed(mapped, "x").record);
        // The window is still open; at shutdown its count is summed up anyway.
        assert!(f.sweep().is_empty());
        let drained = f.drain();
        assert_eq!(
            drained,
            vec![Event::AuthThrottled {
                client_addr: "2001:db8:1:2::/64".into(),
                failures: 3,
                window_secs: 60,
                claimed: vec!["user8".into(), "user9".into(), "user10".into()],
            }]
        );
    }

    #[test]
    fn many_sources_together_are_bounded_too() {
        let dir = tempfile::tempdir().unwrap();
        let f = FailedLogins::new(clock(dir.path(), 0));
        let mut recorded = 0;
        for i in 0..RECORDED_PER_WINDOW_IN_ALL + 50 {
            let a: IpAddr = std::net::Ipv4Addr::from(0x0a00_0000 + i).into();
            recorded += u32::from(f.failed(a, "u").record);
        }
        assert_eq!(recorded, RECORDED_PER_WINDOW_IN_ALL);
        let drained = f.drain();
        assert_eq!(drained.len(), 50);
    }
}
