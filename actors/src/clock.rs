//! The one place the actor tree reads time.
//!
//! In production it is the system clock. In tests it is derived from Tokio's clock, so that
//! `tokio::time::pause()` and `advance()` move the engine's notion of "now" together with its
//! timers: a 24-hour human timeout can be tested in milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use engine::Timestamp;

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Wall-clock time.
    System,
    /// `start` plus the Tokio time elapsed since `origin` (follows paused time in tests).
    Tokio {
        start: Timestamp,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// A Tokio-driven clock starting at `start`.
    pub fn tokio_at(start: Timestamp) -> Self {
        Self::Tokio {
            start,
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Self::System => system_now(),
            Self::Tokio { start, origin } => start.plus_millis(origin.elapsed().as_millis() as i64),
        }
    }
}

/// Wall-clock time as a [`Timestamp`].
pub fn system_now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms)
}
