//! keylink's connector conformance suite against the S3 emulator (moto, started by `cargo xtask
//! test`), one test per check, each in a bucket of its own. The listing check writes 1,200
//! objects: more than one ListObjectsV2 page.

mod emulator;

use std::sync::Arc;

use keylink_core::testkit::{Harness, unique_prefix};

async fn s3_harness() -> Harness {
    let store = Arc::new(emulator::fresh_store("conformance").await);
    Harness::new(store.clone(), store, unique_prefix("conformance"))
}

keylink_core::conformance_tests!(s3_harness);
