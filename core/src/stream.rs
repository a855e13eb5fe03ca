//! Message streams: where events come from and go to in `keylink stream` (SPEC §11).
//!
//! The same two layers as the object connectors ([`crate::connector`]):
//!
//! - the config is the connector's [`ConnectorConfig`](crate::connector::ConnectorConfig) (`{ "type": "kafka", … }` in
//!   `keylink.yaml`, registered with `typetag`); a connector that speaks messages overrides
//!   [`build_message_source`](crate::connector::ConnectorConfig::build_message_source) and
//!   [`build_message_sink`](crate::connector::ConnectorConfig::build_message_sink), whose
//!   defaults refuse with [`ErrorKind::NotSupported`](crate::ErrorKind::NotSupported);
//! - [`MessageSource`] and [`MessageSink`] are the running components: object-safe, async, bytes
//!   only. They never see JSON.
//!
//! Delivery is at least once, and the contracts below are what makes it so:
//!
//! - a [`MessageSource`] yields batches of messages, each with its [`Position`]; it moves its
//!   committed position only when told ([`MessageSource::commit`]), and a source opened again on
//!   the same topic and group starts after the last committed position — everything polled but
//!   not committed is delivered again;
//! - a [`MessageSink`]'s [`MessageSink::send`] returns only once every message of the batch is
//!   durably acknowledged (Kafka: `acks=all`), or fails; the caller commits its input only after
//!   every output acknowledged.
//!
//! A batch job writes its topic targets through a [`TransactionalSink`] instead: everything in
//! one [`MessageTransaction`], committed after the job's object outputs, or aborted.
//!
//! The conformance suite every message connector runs is
//! `keylink_core::testkit::stream` (feature `testkit`), with an in-memory bus for tests of
//! what is built on these traits.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// Where a message is in its topic: a partition and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The partition.
    pub partition: i32,
    /// The message's offset within the partition.
    pub offset: i64,
}

/// A message read from a [`MessageSource`].
#[derive(Clone)]
pub struct InMessage {
    /// The message body.
    pub payload: Bytes,
    /// Where it is; give it back to [`MessageSource::commit`] once it is done.
    pub position: Position,
}

impl fmt::Debug for InMessage {
    // the payload may be personal data: its size only
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMessage")
            .field("bytes", &self.payload.len())
            .field("position", &self.position)
            .finish()
    }
}

/// A message to send through a [`MessageSink`].
#[derive(Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// The message key (keylink uses the keyLink — never a plaintext value), or none.
    pub key: Option<Bytes>,
    /// The message body.
    pub payload: Bytes,
}

impl fmt::Debug for OutMessage {
    // the payload may be personal data: its size only
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutMessage")
            .field("key_bytes", &self.key.as_ref().map(Bytes::len))
            .field("bytes", &self.payload.len())
            .finish()
    }
}

/// What a message source reads: a topic, as a member of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic.
    pub topic: String,
    /// The consumer group: its committed positions are where a restarted source resumes.
    pub group_id: String,
}

/// A running source of messages (one consumer).
#[async_trait]
pub trait MessageSource: Send + fmt::Debug {
    /// Waits up to `wait` for messages and returns at most `max` of them, in order within each
    /// partition; an empty batch when none came. Messages after the last committed position
    /// that were returned before but not committed (by this source or an earlier one of the same
    /// group) are returned again.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<InMessage>>;

    /// Marks everything up to and including each of `done` (per partition: the highest
    /// position given) as processed, durably: a source opened later on the same subscription
    /// starts after it. Returns once the commit is acknowledged.
    async fn commit(&mut self, done: &[Position]) -> Result<()>;

    /// The position of the last message of every partition of the topic at this moment (one
    /// round trip; partitions without messages are left out): how far a final read must go to
    /// have everything the topic holds now (the batch exporter's last export, SPEC §11). The
    /// default refuses with [`ErrorKind::NotSupported`](crate::ErrorKind::NotSupported).
    async fn last_positions(&mut self) -> Result<Vec<Position>> {
        Err(crate::error::Error::not_supported(
            "this message source cannot tell where its topic ends",
        ))
    }
}

/// A running sink of messages (one producer, any topic).
#[async_trait]
pub trait MessageSink: Send + Sync + fmt::Debug {
    /// Sends `messages` to `topic`, in order, and returns once every one of them is durably
    /// acknowledged; an error means some may not be (the caller must not commit its input).
    async fn send(&self, topic: &str, messages: &[OutMessage]) -> Result<()>;

    /// Whether the sink can take messages now, checked with a round trip (the gateway's
    /// readiness and its answer 503 while an output is down).
    async fn check(&self) -> Result<()>;

    /// A human name for a topic, for messages (`kafka://127.0.0.1:9092/clickstream`).
    fn describe(&self, topic: &str) -> String;
}

/// A producer that writes messages in transactions: what a batch job with topic targets writes
/// through (SPEC §11), so that its messages become visible all together, when the job commits,
/// or never.
///
/// Built by [`ConnectorConfig::build_transactional_sink`](crate::connector::ConnectorConfig::build_transactional_sink)
/// without I/O (so `keylink validate` can check that a connector takes topic targets); the
/// first round trip is [`TransactionalSink::begin`].
#[async_trait]
pub trait TransactionalSink: Send + Sync + fmt::Debug {
    /// Starts a transaction. Messages sent through it are invisible to readers that read only
    /// committed messages (Kafka: `isolation.level=read_committed`) until
    /// [`MessageTransaction::commit`] returns, and never visible after
    /// [`MessageTransaction::abort`] (or when the transaction is dropped without either: the
    /// broker aborts it when it times out).
    async fn begin(&self) -> Result<Box<dyn MessageTransaction>>;

    /// A human name for a topic, for messages (`kafka://127.0.0.1:9092/clickstream`).
    fn describe(&self, topic: &str) -> String;
}

/// An open transaction of a [`TransactionalSink`], on any topics.
#[async_trait]
pub trait MessageTransaction: Send + fmt::Debug {
    /// Sends `messages` to `topic`, in order, within the transaction; returns once each is
    /// acknowledged by the broker (still invisible to committed readers). An error makes the
    /// transaction unusable: abort it.
    async fn send(&mut self, topic: &str, messages: &[OutMessage]) -> Result<()>;

    /// Commits: every message sent becomes visible, on every topic at once. An error means none
    /// is (the implementation aborts what it can).
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Aborts: no message sent is ever visible to committed readers.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// The highest position per partition of `positions`: what [`MessageSource::commit`] needs.
pub fn last_per_partition(positions: impl IntoIterator<Item = Position>) -> Vec<Position> {
    let mut last: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for p in positions {
        let e = last.entry(p.partition).or_insert(p.offset);
        *e = (*e).max(p.offset);
    }
    last.into_iter()
        .map(|(partition, offset)| Position { partition, offset })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_positions_per_partition() {
        let p = |partition, offset| Position { partition, offset };
        assert_eq!(
            last_per_partition([p(1, 5), p(0, 3), p(1, 2), p(0, 7)]),
            vec![p(0, 7), p(1, 5)]
        );
        assert!(last_per_partition([]).is_empty());
    }

    #[test]
    fn debug_shows_sizes_not_payloads() {
        let m = OutMessage {
            key: Some(Bytes::from_static(b"k")),
            payload: Bytes::from_static(b"alice@example.com"),
        };
        let d = format!("{m:?}");
        assert!(!d.contains("alice"), "{d}");
        let m = InMessage {
            payload: Bytes::from_static(b"alice@example.com"),
            position: Position {
                partition: 0,
                offset: 1,
            },
        };
        assert!(!format!("{m:?}").contains("alice"));
    }
}
