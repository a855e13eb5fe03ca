//! keylink's connector conformance suite against the GCS emulator (fake-gcs-server, started by
//! `cargo xtask test`), one test per check, each in a bucket of its own. The listing check
//! writes 1,200 objects: more than one `objects.list` page.

mod emulator;

use std::sync::Arc;

use keylink_core::testkit::{Harness, unique_prefix};

async fn gcs_harness() -> Harness {
    // small chunks: the large-object check then goes through a multi-chunk resumable upload
    let store = Arc::new(
        emulator::fresh_store("conformance")
            .await
            .with_chunk_size(keylink_connector_gcs::CHUNK_ALIGN * 4),
    );
    Harness::new(store.clone(), store, unique_prefix("conformance"))
}

keylink_core::conformance_tests!(gcs_harness);
