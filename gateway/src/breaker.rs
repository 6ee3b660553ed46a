//! A per-endpoint circuit breaker: it opens after `failures` consecutive failed calls and rejects
//! calls for `cooldown`, then lets one trial call through (half-open); a failed trial re-opens it
//! at once. Shared by the LLM and the embeddings clients.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    cooldown: Duration,
    /// 1 while open.
    gauge: IntGauge,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(failures: u32, cooldown: Duration, gauge: IntGauge) -> Self {
        Self {
            failures: failures.max(1),
            cooldown,
            gauge,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go to the endpoint now.
    pub fn allows(&self) -> bool {
        let mut state = self.state();
        match state.open_until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                // Half-open: let this call through; a failure re-opens at once.
                state.open_until = None;
                state.consecutive_failures = self.failures - 1;
                self.gauge.set(0);
                true
            }
            None => true,
        }
    }

    /// Records a call's outcome; returns true when this failure opened the breaker.
    pub fn record(&self, ok: bool) -> bool {
        let mut state = self.state();
        if ok {
            state.consecutive_failures = 0;
            return false;
        }
        state.consecutive_failures += 1;
        if state.consecutive_failures >= self.failures && state.open_until.is_none() {
            state.open_until = Some(Instant::now() + self.cooldown);
            self.gauge.set(1);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_half_opens_after_the_cooldown() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let breaker = Breaker::new(2, Duration::ZERO, gauge.clone());
        assert!(breaker.allows());
        assert!(!breaker.record(false));
        breaker.record(true);
        assert!(!breaker.record(false), "a success resets the count");
        assert!(breaker.record(false));
        assert_eq!(gauge.get(), 1);
        // Zero cooldown: the next call is the half-open trial, and its failure re-opens.
        assert!(breaker.allows());
        assert_eq!(gauge.get(), 0);
        assert!(breaker.record(false));
    }

    #[test]
    fn an_open_breaker_rejects_until_the_cooldown_ends() {
        let breaker = Breaker::new(1, Duration::from_secs(60), IntGauge::new("g", "g").unwrap());
        breaker.record(false);
        assert!(!breaker.allows());
    }
}
