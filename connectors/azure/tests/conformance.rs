//! keylink's connector conformance suite against Azurite (started by `cargo xtask test`), one
//! test per check, each in a container of its own. The listing check writes 1,200 blobs; the
//! store lists in pages of 500 here, so the listing spans several pages.

mod emulator;

use std::sync::Arc;

use keylink_core::testkit::{Harness, unique_prefix};

async fn azure_harness() -> Harness {
    let store = Arc::new(
        emulator::fresh_store("conformance")
            .await
            .with_list_page_size(500),
    );
    Harness::new(store.clone(), store, unique_prefix("conformance"))
}

keylink_core::conformance_tests!(azure_harness);
