//! The Azure emulator the tests run against: `cargo xtask test` starts Azurite and exports
//! `AZURE_STORAGE_CONNECTION_STRING` and `KEYLINK_TEST_AZURE_ENDPOINT`. Without them the tests
//! fail (they never skip).
#![allow(dead_code)]

use std::hash::{BuildHasher, Hasher};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keylink_connector_azure::{AzureConfig, AzureCredentials, AzureStore};
use keylink_core::Sensitive;

/// Azurite's public development account and key (documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
/// See [`ACCOUNT`].
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The emulator's blob endpoint (`http://127.0.0.1:<port>/devstoreaccount1`), checked to
/// answer. Panics with what to do when it is missing.
pub fn endpoint() -> String {
    let endpoint = std::env::var("KEYLINK_TEST_AZURE_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "KEYLINK_TEST_AZURE_ENDPOINT is not set: the Azure tests need the Azurite emulator. \
             Run `cargo xtask test`, or `cargo xtask emulators start` and export what it prints."
        )
    });
    let host = endpoint
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let reachable = host
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "the Azure emulator at {endpoint} (KEYLINK_TEST_AZURE_ENDPOINT) does not answer: run \
         `cargo xtask test`, or `cargo xtask emulators start`"
    );
    endpoint
}

/// A config for `container` on the emulator with the account key (the connector mints SAS
/// tokens from it, which Azurite checks).
pub fn config(container: &str) -> AzureConfig {
    let mut c = AzureConfig::new(container);
    c.account = Some(ACCOUNT.into());
    c.endpoint = Some(endpoint());
    c.credentials = Some(AzureCredentials::AccountKey(Sensitive::new(KEY.into())));
    c
}

/// A container name no other test (or earlier run on the same emulator) uses.
pub fn unique_container(purpose: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("kl-{purpose}-{:016x}", h.finish())
}

/// A store on a new, empty container.
pub async fn fresh_store(purpose: &str) -> AzureStore {
    let container = unique_container(purpose);
    let store = config(&container)
        .build_store()
        .await
        .expect("build the Azure store");
    store
        .create_container()
        .await
        .unwrap_or_else(|e| panic!("create container {container}: {e}"));
    store
}
