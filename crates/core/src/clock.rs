//! Time comes from an injectable clock so retention, expiry and tombstones
//! can be tested without sleeping.

use chrono::{DateTime, TimeZone, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> i64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        Utc::now().timestamp_micros()
    }
}

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(at_micros: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(at_micros)))
    }
    pub fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(secs * 1_000_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn to_datetime(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

pub fn to_rfc3339(micros: i64) -> String {
    to_datetime(micros).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
