//! Conversa's HTTP gateway: the only crate that knows HTTP.
//!
//! - [`config`]: every flag and environment variable.
//! - [`server`]: `run()` and the ordered shutdown.
//! - [`app`]: the shared state and the router; [`api`]: the handlers.
//! - [`providers`]: provider webhooks parsed into one normalised model, and provider clients.
//! - [`events`]: the dashboard event hub (sequence numbers, resync window, fan-out).
//! - [`llm`]: the OpenAI-compatible client (timeouts, retries, circuit breaker, usage and cost).
//! - [`embeddings`]: the embeddings client and the embedding of knowledge chunks; [`breaker`].
//! - [`console`]: the operator console's static files, embedded.
//! - [`metrics`] (and [`instrumented_store`], store call timings), [`telemetry`], [`error`], [`shutdown`], [`util`].

pub mod api;
pub mod app;
pub mod breaker;
pub mod config;
pub mod console;
pub mod embeddings;
pub mod error;
pub mod events;
pub mod hot;
pub mod instrumented_store;
pub mod llm;
pub mod metrics;
pub mod outbound;
pub mod providers;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod util;
