//! `loadtest`: drives a running Conversa the way WhatsApp providers and dashboards do, and measures it.
//!
//! One run (contract §6) creates its own tenants through the admin API, starts a recording provider
//! server and an OpenAI-compatible server on loopback, sends provider-shaped webhooks at a target rate
//! in one of four traffic shapes, keeps dashboards connected over the WebSocket stream, and reports
//! ingest throughput, ack latency, turn latency, lost and duplicated answers, dashboard event latency,
//! errors by kind and the server's RSS and CPU.
//!
//! Module map:
//! - [`config`]: the command line, its bounds, and the loopback-only rule.
//! - [`payload`]: provider kinds, their tenant configuration and webhook bodies (signed where needed).
//! - [`recorder`]: the recording provider server; every answer Conversa sends lands here.
//! - [`llm`]: the OpenAI-compatible server with configurable latency.
//! - [`target`]: the admin API (tenants, knowledge), provider probing and `/metrics` scraping.
//! - [`scenario`]: the traffic shapes and the driver that schedules turns per contact.
//! - [`listener`]: dashboard WebSocket clients measuring event latency.
//! - [`report`]: histograms, the JSON report and the text summary.
//!
//! **Invariant:** a contact has at most one open turn at a time: its next burst starts only after the
//! previous turn was answered (or timed out, and then the contact sends no more). That is what makes
//! every answer attributable to exactly one turn, so "lost" and "duplicated" are exact counts.
//!
//! **Invariant:** every run is bounded in time (`--duration` plus the grace period) and in count
//! (`--max-messages`), and targets loopback addresses only unless `--allow-remote` is given.

pub mod config;
pub mod listener;
pub mod llm;
pub mod payload;
pub mod recorder;
pub mod report;
pub mod scenario;
pub mod target;

pub use config::Args;
pub use report::Report;
pub use scenario::run;
