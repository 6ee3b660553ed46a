//! Conversa's data model and its stores.
//!
//! [`embedded::EmbeddedStore`] is the default store: one SQLite file (`conversa.db`, WAL mode)
//! under `CONVERSA_DATA_DIR`, implementing [`engine::ports::Store`]. It passes the same
//! conformance suite as every other store (`engine::testsuite::conformance`, run from
//! `tests/conformance.rs`). The CQL files under `cql/` describe the ScyllaDB layout.
//!
//! Module map:
//! - [`embedded`]: the store, its writer thread with group commit, its read pool, its migrations.
//! - [`scylla`]: [`scylla::ScyllaStore`], the same port on a ScyllaDB cluster (history with TTL),
//!   selected by `CONVERSA_SCYLLA_NODES`; its tables are documented in `cql/`.
//! - [`migrate`]: `conversa migrate`, the runner of the numbered CQL files (ledger, checksums,
//!   schema agreement).
//! - [`redis`]: [`redis::HotState`], the shared hot state in Redis (dedupe guard, rate limits,
//!   dashboard event fan-out), selected by `CONVERSA_REDIS_URL`.
//!
//! Tables of the embedded store (key → the query it exists for):
//! - `tenants` (`id`): the whole tenant as JSON; get, list, replace.
//! - `knowledge` (`tenant`): the knowledge text and its chunks as JSON.
//! - `conversations` (`tenant, contact`): state, reason, timestamps, human deadline; indexed by
//!   `(tenant, activity, contact)` and `(tenant, state, activity, contact)` for listings, by
//!   `human_deadline` for the timeout scan.
//! - `messages` (`seq`, the rowid): the history; indexed by `(tenant, contact, at, seq)` for paging
//!   newest first, by `(tenant, provider_id)` of outbound messages for deliveries and echoes, by
//!   `expires_at` for the sweep.
//! - `dedupe` (`tenant, key`): provider message ids already ingested; indexed by `seen_at` for the
//!   sweep.
//! - `inbox` (`seq`, autoincrement): accepted inbound events not yet committed by their
//!   conversation; `done` marks the ones whose effects are stored.
//! - `outbox` (`seq`, autoincrement): committed sends waiting for the provider.
//!
//! **Invariant:** every write of the [`engine::ports::Store`] trait is one transaction (a savepoint
//! inside the writer's group transaction): it stores all it was given or nothing.
//!
//! **Invariant:** inbox and outbox seqs are strictly increasing in insertion order and never
//! reused, even after sweeps.
//!
//! **Invariant:** no call blocks the async runtime: writes wait on a channel for the writer
//! thread, reads run in `spawn_blocking`.

pub mod embedded;
pub mod migrate;
pub mod redis;
pub mod scylla;

pub use embedded::{Durability, EmbeddedStore};
