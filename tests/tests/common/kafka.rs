//! What the tests against the Kafka broker share: its address, a client config with low group
//! timeouts (SERVICES.md), unique names per test, a runtime.

use keylink_connector_kafka::KafkaConfig;

/// The broker `cargo xtask` started. Fails loudly (never skips) when it is not set.
pub fn broker() -> String {
    std::env::var("KEYLINK_TEST_KAFKA").expect(
        "KEYLINK_TEST_KAFKA is not set: start a broker with `cargo xtask kafka start` (or run \
         `cargo xtask test`), then export the address it prints",
    )
}

/// The connector config for [`broker`], with consumer-group timeouts low enough for tests.
pub fn kafka() -> KafkaConfig {
    KafkaConfig::new(broker())
        .with_property("session.timeout.ms", "6000")
        .with_property("heartbeat.interval.ms", "1000")
        .with_property("max.poll.interval.ms", "7000")
}

/// `name` made unique to this moment and process: topics and groups of one test.
pub fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{n:x}-{}", std::process::id())
}

/// A multi-threaded runtime for the async clients.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}
