//! Failed logins, recorded without letting anyone flood the trail with them.
//!
//! Every failed login used to be one durable audit event, written (fsync'd) before the client
//! got its error. Anyone who can reach the port could make Weir write the disk as fast as they
//! could connect: a cheap way to fill the trail, burn the disk's flushes that statements wait
//! for, and bury the attempts that matter. So, per client address, the first
//! [`RECORDED_PER_WINDOW`] failures of a minute are recorded one by one as they always were;
//! the rest of that minute's are counted, and one `auth_throttled` event says how many, from
//! where, when the minute is over (at the address's next failure, or at the latest at the next
//! sweep, every minute). Nothing is refused because of it: tokens carry 256 bits and ID tokens
//! are signed, so there is nothing to guess — only the record is condensed.
//!
//! Memory is bounded: at most [`MAX_ADDRESSES`] addresses are tracked; beyond that, failures
//! from new addresses are counted under one shared entry (`*`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use weir_audit::Event;
use weir_store::Clock;

/// Failures from one address recorded one by one per window.
pub const RECORDED_PER_WINDOW: u32 = 20;
/// The window, in milliseconds.
pub const WINDOW_MS: u64 = 60_000;
/// Addresses tracked at once.
pub const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    failures: u32,
}

impl Window {
    fn suppressed(&self) -> u32 {
        self.failures.saturating_sub(RECORDED_PER_WINDOW)
    }
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

/// Failed logins per client address (`None` key: the shared overflow entry).
pub struct FailedLogins {
    clock: Clock,
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

impl FailedLogins {
    pub fn new(clock: Clock) -> FailedLogins {
        FailedLogins {
            clock,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// A login from `addr` failed: is it recorded?
    pub fn failed(&self, addr: IpAddr) -> Verdict {
        let now = self.clock.now_ms();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut summaries = Vec::new();
        let key = if windows.contains_key(&Some(addr)) || windows.len() < MAX_ADDRESSES {
            Some(addr)
        } else {
            // Full: make room from ended windows first; still full, share one entry.
            summaries = sweep(&mut windows, now);
            if windows.len() < MAX_ADDRESSES {
                Some(addr)
            } else {
                None
            }
        };
        let w = windows.entry(key).or_insert(Window {
            start_ms: now,
            failures: 0,
        });
        if now.saturating_sub(w.start_ms) >= WINDOW_MS {
            if let Some(e) = summary(key, w) {
                summaries.push(e);
            }
            *w = Window {
                start_ms: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        Verdict {
            record: w.failures <= RECORDED_PER_WINDOW,
            summaries,
        }
    }

    /// Forgets windows that ended, returning the summaries of those that counted failures
    /// without recording them. Run every minute.
    pub fn sweep(&self) -> Vec<Event> {
        let now = self.clock.now_ms();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        sweep(&mut windows, now)
    }
}

fn sweep(windows: &mut HashMap<Option<IpAddr>, Window>, now: u64) -> Vec<Event> {
    let mut out = Vec::new();
    windows.retain(|key, w| {
        if now.saturating_sub(w.start_ms) < WINDOW_MS {
            return true;
        }
        out.extend(summary(*key, w));
        false
    });
    out
}

fn summary(key: Option<IpAddr>, w: &Window) -> Option<Event> {
    let failures = w.suppressed();
    (failures > 0).then(|| Event::AuthThrottled {
        client_addr: key.map_or_else(|| "*".to_owned(), |a| a.to_string()),
        failures: u64::from(failures),
        window_secs: WINDOW_MS / 1000,
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
            assert_eq!(f.failed(a), recorded(vec![]));
        }
        for _ in 0..5 {
            assert_eq!(
                f.failed(a),
                Verdict {
                    record: false,
                    summaries: vec![]
                }
            );
        }
        // Another address has its own window.
        assert_eq!(f.failed(b), recorded(vec![]));
        assert!(f.sweep().is_empty(), "the window is not over");

        // A minute later: a's next failure is recorded after the summary of its last window.
        std::fs::write(dir.path().join("clock"), "61").unwrap();
        assert_eq!(
            f.failed(a),
            recorded(vec![Event::AuthThrottled {
                client_addr: "192.0.2.7".into(),
                failures: 5,
                window_secs: 60,
            }])
        );
        // b's window counted nothing beyond the limit: the sweep forgets it silently.
        assert!(f.sweep().is_empty());
        for _ in 0..RECORDED_PER_WINDOW + 2 {
            f.failed(b);
        }
        std::fs::write(dir.path().join("clock"), "122").unwrap();
        let swept = f.sweep();
        assert_eq!(swept.len(), 1, "{swept:?}");
        assert_eq!(f.windows.lock().unwrap().len(), 0);
    }
}
