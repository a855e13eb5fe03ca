//! The S3 emulator the tests run against: `cargo xtask test` starts it and exports
//! `KEYLINK_TEST_S3_ENDPOINT`. Without it the tests fail (they never skip).
#![allow(dead_code)]

use std::hash::{BuildHasher, Hasher};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keylink_connector_s3::{S3Config, S3Credentials, S3Store};
use keylink_core::Sensitive;

/// The emulator's endpoint, checked to answer. Panics with what to do when it is missing.
pub fn endpoint() -> String {
    let endpoint = std::env::var("KEYLINK_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "KEYLINK_TEST_S3_ENDPOINT is not set: the S3 tests need the S3 emulator. Run `cargo \
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
        "the S3 emulator at {endpoint} (KEYLINK_TEST_S3_ENDPOINT) does not answer: run `cargo \
         xtask test`, or `cargo xtask emulators start`"
    );
    endpoint
}

/// A config for `bucket` on the emulator, everything explicit.
pub fn config(bucket: &str) -> S3Config {
    let mut c = S3Config::new(bucket);
    c.region = Some("us-east-1".into());
    c.endpoint = Some(endpoint());
    c.force_path_style = Some(true);
    c.credentials = Some(S3Credentials {
        access_key_id: Sensitive::new("test".into()),
        secret_access_key: Sensitive::new("test".into()),
        session_token: None,
    });
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

/// A store on a new, empty bucket.
pub async fn fresh_store(purpose: &str) -> S3Store {
    let bucket = unique_bucket(purpose);
    let store = config(&bucket)
        .build_store()
        .await
        .expect("build the S3 store");
    store
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
    store
}

/// The multipart uploads in progress in the store's bucket.
pub async fn pending_uploads(store: &S3Store) -> Vec<String> {
    let out = store
        .client()
        .list_multipart_uploads()
        .bucket(store.bucket())
        .send()
        .await
        .expect("list multipart uploads");
    out.uploads()
        .iter()
        .map(|u| format!("{:?} {:?}", u.key(), u.upload_id()))
        .collect()
}
