//! Latency histograms, the JSON report (contract §6 fields first, then the details) and the text summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds, from 1 µs to 10 minutes with 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// p50/p95/p99/max in milliseconds.
    pub fn summary(&self) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.0.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.0.len(),
            p50: ms(self.0.value_at_quantile(0.50)),
            p95: ms(self.0.value_at_quantile(0.95)),
            p99: ms(self.0.value_at_quantile(0.99)),
            max: ms(self.0.max()),
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub count: u64,
}

/// Answer accounting: every turn with an accepted message expects exactly one answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Answers {
    /// Turns started (at least one fragment accepted).
    pub turns: u64,
    /// Answers the turns should have received (one per turn, plus one per debounce split).
    pub expected: u64,
    /// Texts the recording provider received for the run's contacts.
    pub received: u64,
    /// Turns that got no answer by the end of the grace period.
    pub lost: u64,
    /// Answers beyond the one a turn should get.
    pub duplicated: u64,
    /// Answers that arrived after `--turn-timeout` (counted, not lost).
    pub late: u64,
    /// Turns the server flushed before their last fragment arrived (a fragment came later than the
    /// debounce window; each adds an expected answer).
    pub debounce_splits: u64,
    /// Answers that were the fallback message (a handoff to a human).
    pub handoffs: u64,
    /// Fallback answers to turns that did not ask for a human (low retrieval confidence, or a
    /// fragment of a split burst that alone said nothing the knowledge covers).
    pub unexpected_handoffs: u64,
    /// `lost` and `duplicated` as the client attributed them, before the audit.
    pub client_lost: u64,
    pub client_duplicated: u64,
    /// Contacts whose answers were recounted from their history on the server (ambiguous
    /// attribution: debounce splits, duplicates, timeouts, unexpected handoffs).
    pub audited_contacts: u64,
}

/// Dashboard stream results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dashboards {
    pub requested: u32,
    pub connected: u32,
    /// `ok`, `unavailable` (no stream endpoint on the server) or `not_requested`.
    pub status: String,
    pub events: u64,
    pub matched_messages: u64,
    pub resync_required: u64,
    pub disconnects: u64,
}

/// What the server's `/metrics` said.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerView {
    pub rss_bytes_start: Option<f64>,
    pub rss_bytes_peak: Option<f64>,
    pub cpu_seconds_run: Option<f64>,
    pub open_fds: Option<f64>,
    pub live_conversations_end: Option<f64>,
    pub live_conversations_peak: Option<f64>,
    pub mailbox_depth_peak: Option<f64>,
    /// Server-side histograms over the run (bucket deltas, `histogram_quantile` style), in ms.
    pub webhook_ack_ms: Option<Percentiles>,
    pub turn_engine_ms: Option<Percentiles>,
    pub turn_buffer_ms: Option<Percentiles>,
    pub send_ms: Option<Percentiles>,
    pub turns_by_outcome: BTreeMap<String, f64>,
}

/// The LLM server's view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LlmView {
    pub latency_ms: f64,
    pub chat_requests: u64,
    pub embedding_requests: u64,
}

/// Load generator bookkeeping: how much of the target rate was really offered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Offered {
    pub rate_target: u32,
    pub sent: u64,
    pub sent_per_s: f64,
    /// Send slots with no contact ready for a turn (all contacts busy or retired).
    pub idle_slots: u64,
    /// Send slots given up because `--concurrency` requests were already in flight.
    pub backpressure_slots: u64,
    pub max_messages: u64,
}

/// The run's report. The first fields are contract §6's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub accepted: u64,
    pub rejected: u64,
    pub ack_latency_ms: Percentiles,
    pub turn_latency_ms: Percentiles,
    pub answers: Answers,
    pub dashboard_latency_ms: Option<Percentiles>,
    pub errors: BTreeMap<String, u64>,
    pub rss_bytes: Option<f64>,
    pub cpu_seconds: Option<f64>,

    pub target: String,
    /// `extractive` or `llm`: whether the OpenAI-compatible server got any chat request.
    pub mode: String,
    pub shape: crate::config::Shape,
    pub duration_s: f64,
    pub webhooks_per_s: f64,
    pub providers_used: Vec<String>,
    /// Requested providers the server does not accept, with the reason.
    pub providers_skipped: BTreeMap<String, String>,
    pub tenants: u32,
    pub contacts: u32,
    pub debounce_ms: u64,
    pub offered: Offered,
    pub dashboards: Dashboards,
    pub server: ServerView,
    pub llm: LlmView,
    /// True when no answer was lost or duplicated.
    pub ok: bool,
}

impl Report {
    /// The end-of-run summary for people.
    pub fn text(&self) -> String {
        let p = |l: &Percentiles| {
            format!(
                "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
                l.p50, l.p95, l.p99, l.max, l.count
            )
        };
        let mib =
            |b: Option<f64>| b.map_or("n/a".to_owned(), |b| format!("{:.1} MiB", b / 1_048_576.0));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Conversa load test: {} ({:?} shape, {} mode)",
            self.target, self.shape, self.mode
        );
        let _ = writeln!(
            s,
            "  providers       {} used{}",
            self.providers_used.join(","),
            if self.providers_skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; skipped {}",
                    self.providers_skipped
                        .iter()
                        .map(|(k, v)| format!("{k} ({v})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        let _ = writeln!(
            s,
            "  load            {} tenants, {} contacts, {:.1} s, target {}/s, sent {} ({:.0}/s)",
            self.tenants,
            self.contacts,
            self.duration_s,
            self.offered.rate_target,
            self.offered.sent,
            self.offered.sent_per_s
        );
        let _ = writeln!(
            s,
            "  webhooks        accepted {} ({:.0}/s), rejected {}",
            self.accepted, self.webhooks_per_s, self.rejected
        );
        let _ = writeln!(s, "  ack latency     {}", p(&self.ack_latency_ms));
        let _ = writeln!(
            s,
            "  turn latency    {}  (last inbound → provider send; includes debounce {} ms)",
            p(&self.turn_latency_ms),
            self.debounce_ms
        );
        let a = &self.answers;
        let _ = writeln!(
            s,
            "  answers         turns {}, expected {}, received {}, LOST {}, DUPLICATED {}, late {}, debounce splits {}, handoffs {} ({} unexpected)",
            a.turns,
            a.expected,
            a.received,
            a.lost,
            a.duplicated,
            a.late,
            a.debounce_splits,
            a.handoffs,
            a.unexpected_handoffs
        );
        if a.audited_contacts > 0 {
            let _ = writeln!(
                s,
                "  audit           {} ambiguous contacts recounted from their server history (client view: lost {}, duplicated {})",
                a.audited_contacts, a.client_lost, a.client_duplicated
            );
        }
        match &self.dashboard_latency_ms {
            Some(l) => {
                let _ = writeln!(
                    s,
                    "  dashboards      {}/{} connected, event latency {}",
                    self.dashboards.connected,
                    self.dashboards.requested,
                    p(l)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "  dashboards      {} ({} requested)",
                    self.dashboards.status, self.dashboards.requested
                );
            }
        }
        if let Some(l) = &self.server.turn_engine_ms {
            let _ = writeln!(s, "  server engine   per turn (LLM excluded) {}", p(l));
        }
        let _ = writeln!(
            s,
            "  server          RSS {} (peak {}), CPU {:.1} s over the run, live conversations {} (peak {})",
            mib(self.rss_bytes),
            mib(self.server.rss_bytes_peak),
            self.server.cpu_seconds_run.unwrap_or(f64::NAN),
            self.server.live_conversations_end.unwrap_or(f64::NAN),
            self.server.live_conversations_peak.unwrap_or(f64::NAN),
        );
        if !self.errors.is_empty() {
            let _ = writeln!(
                s,
                "  errors          {}",
                self.errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let _ = writeln!(
            s,
            "  result          {}",
            if self.ok {
                "OK: no answer lost or duplicated"
            } else {
                "FAILED: answers lost or duplicated"
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut l = Latency::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let p = l.summary();
        assert_eq!(p.count, 100);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
        assert_eq!(Latency::default().summary(), Percentiles::default());
    }

    #[test]
    fn the_json_report_has_the_contract_fields() {
        let v = serde_json::to_value(Report::default()).unwrap();
        for field in [
            "accepted",
            "rejected",
            "ack_latency_ms",
            "turn_latency_ms",
            "answers",
            "dashboard_latency_ms",
            "errors",
            "rss_bytes",
            "cpu_seconds",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
        for q in ["p50", "p95", "p99", "max"] {
            assert!(v["ack_latency_ms"].get(q).is_some() && v["turn_latency_ms"].get(q).is_some());
        }
        assert!(v["answers"].get("lost").is_some() && v["answers"].get("duplicated").is_some());
    }
}
