//! The GCS emulator the tests run against: `cargo xtask test` starts fake-gcs-server and exports
//! `KEYLINK_TEST_GCS_ENDPOINT` (and `STORAGE_EMULATOR_HOST`). Without it the tests fail (they
//! never skip).
#![allow(dead_code)]

use std::hash::{BuildHasher, Hasher};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gcloud_storage::http::buckets::insert::{InsertBucketParam, InsertBucketRequest};
use keylink_connector_gcs::{GcsConfig, GcsCredentials, GcsStore};

/// The emulator's endpoint, checked to answer. Panics with what to do when it is missing.
pub fn endpoint() -> String {
    let endpoint = std::env::var("KEYLINK_TEST_GCS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "KEYLINK_TEST_GCS_ENDPOINT is not set: the GCS tests need the GCS emulator. Run `cargo \
             xtask test`, or `cargo xtask emulators start` and export what it prints."
        )
    });
    let host = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let reachable = host
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "the GCS emulator at {endpoint} (KEYLINK_TEST_GCS_ENDPOINT) does not answer: run `cargo \
         xtask test`, or `cargo xtask emulators start`"
    );
    endpoint
}

/// A config for `bucket` on the emulator, everything explicit.
pub fn config(bucket: &str) -> GcsConfig {
    let mut c = GcsConfig::new(bucket);
    c.endpoint = Some(endpoint());
    c.credentials = Some(GcsCredentials::Anonymous);
    c
}

/// A bucket name no other test (or earlier run on the same emulator) uses.
pub fn unique_bucket(purpose: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("kl-{purpose}-{:016x}", h.finish())
}

/// Creates `bucket` through `store`'s client.
pub async fn create_bucket(store: &GcsStore) {
    store
        .client()
        .insert_bucket(&InsertBucketRequest {
            name: store.bucket().to_string(),
            param: InsertBucketParam {
                project: "keylink-test".into(),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create bucket {}: {e}", store.bucket()));
}

/// A store on a new, empty bucket.
pub async fn fresh_store(purpose: &str) -> GcsStore {
    let bucket = unique_bucket(purpose);
    let store = config(&bucket)
        .build_store(&Default::default())
        .await
        .expect("build the GCS store");
    create_bucket(&store).await;
    store
}
