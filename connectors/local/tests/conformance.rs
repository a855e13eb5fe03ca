//! keylink's connector conformance suite against a temporary directory: one test per check
//! (from the macro), and the whole suite in one go to time it and to check it leaves the root
//! empty.

use keylink_connector_local::LocalConfig;
use keylink_core::connector::{BuildContext, ConnectorConfig};
use keylink_core::testkit::{self, Harness, unique_prefix};

async fn local_harness() -> Harness {
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let config = LocalConfig::new(dir.path());
    let ctx = BuildContext::default();
    let sink = config.build_sink(&ctx).await.expect("build_sink");
    let source = config.build_source(&ctx).await.expect("build_source");
    Harness::new(source, sink, unique_prefix("conformance")).with_guard(dir)
}

keylink_core::conformance_tests!(local_harness);

/// The whole suite through `run_all`; afterwards the root holds nothing at all (no files, no
/// directories: abort, drop and delete clean up after themselves).
#[tokio::test(flavor = "multi_thread")]
async fn run_all_leaves_the_root_empty() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalConfig::new(dir.path().join("store"));
    let ctx = BuildContext::default();
    let sink = config.build_sink(&ctx).await.unwrap();
    let source = config.build_source(&ctx).await.unwrap();
    let h = Harness::new(source, sink, unique_prefix("all"));
    let result = testkit::run_all(&h).await;
    assert!(result.is_ok(), "{:#?}", result.unwrap_err());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
