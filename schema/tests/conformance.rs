//! The store conformance suite against the embedded store, in a fresh temporary directory.

use std::sync::Arc;

use engine::testsuite::conformance;
use schema::EmbeddedStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).await.unwrap();
    conformance::run_all(Arc::new(store)).await;
}
