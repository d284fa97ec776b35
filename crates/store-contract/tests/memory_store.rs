//! The domain's in-memory store (`tern_core::MemoryStore`) against the `Store` contract, so the
//! store that domain and API tests run on behaves like the real adapters.

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_honours_the_contract() {
    tern_store_contract::run_all(Arc::new(tern_core::MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_use_cases_on_the_memory_store() {
    tern_store_contract::apps::use_cases(Arc::new(tern_core::MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_configurations_on_the_memory_store() {
    tern_store_contract::app_configs::use_cases(Arc::new(tern_core::MemoryStore::new())).await;
}
