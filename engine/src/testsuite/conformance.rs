//! The conformance suite every [`Store`](crate::ports::Store) implementation passes.
//!
//! Written once, run against each backend: `run_all(&store).await` from that backend's tests.

use crate::ports::Store;

/// Runs every conformance check against `store`, which must be empty.
pub async fn run_all(store: &dyn Store) {
    store
        .health()
        .await
        .expect("a fresh store should be healthy");
}
