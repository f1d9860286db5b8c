//! The time Weir decides by: approval deadlines, auto-repeat windows, grant expiry.
//!
//! Normally the system clock. When the environment names `WEIR_CLOCK_FILE`, the file holds
//! an offset in seconds (an integer, may be negative) added to the system clock, read at every
//! call: tests move time forward by writing the file instead of sleeping. Whoever can set the
//! gateway's environment controls its process anyway, so the hook adds no power; the gateway
//! logs a warning at start when it is set.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub const CLOCK_FILE_ENV: &str = "WEIR_CLOCK_FILE";

#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_file: Option<PathBuf>,
}

impl Clock {
    /// The system clock, or the offset clock the environment names.
    pub fn from_env() -> Clock {
        Clock {
            offset_file: std::env::var_os(CLOCK_FILE_ENV).map(PathBuf::from),
        }
    }

    /// The system clock offset by the seconds in `file` (tests).
    pub fn from_file(file: PathBuf) -> Clock {
        Clock {
            offset_file: Some(file),
        }
    }

    pub fn system() -> Clock {
        Clock { offset_file: None }
    }

    /// Whether this clock can be moved (for the startup warning).
    pub fn is_controlled(&self) -> bool {
        self.offset_file.is_some()
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let offset_s = self
            .offset_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let offset_ms = offset_s.saturating_mul(1000);
        if offset_ms >= 0 {
            system.saturating_add(offset_ms.unsigned_abs())
        } else {
            system.saturating_sub(offset_ms.unsigned_abs())
        }
    }
}
