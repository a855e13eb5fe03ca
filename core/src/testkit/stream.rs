//! The message-stream conformance suite, and [`MemoryBus`]: an in-memory message bus with fault
//! injection for testing what is built on [`MessageSource`] and [`MessageSink`] (never as the
//! only test of a real broker's connector).
//!
//! Every message connector runs these checks from its tests against a real broker. They check
//! the contract `keylink stream` relies on for at-least-once delivery:
//!
//! | check | what it checks |
//! | --- | --- |
//! | [`send_then_poll`] | every message sent (several batches, keyed) is polled once, in order per key, payloads and count right |
//! | [`uncommitted_are_redelivered`] | a source reopened on the same group gets exactly what was polled but not committed (no loss) |
//! | [`committed_are_not_redelivered`] | after a commit of everything, a reopened source gets only messages sent later |
//! | [`groups_are_independent`] | a new group starts at the beginning of the topic, whatever other groups committed |
//! | [`empty_poll_returns`] | polling an empty topic returns an empty batch (does not block for ever) |
//! | [`last_positions_are_the_ends`] | [`MessageSource::last_positions`] names, per partition, the offset of the last message sent (none for an empty topic) |
//!
//! Connectors that take a batch job's topic targets ([`TransactionalSink`]) also run
//! [`transaction_conformance_tests!`](crate::transaction_conformance_tests), on sources that
//! read committed messages only:
//!
//! | check | what it checks |
//! | --- | --- |
//! | [`transaction_commits_all_topics`] | messages sent in several batches to two topics in one transaction are all visible after the commit, once each |
//! | [`transaction_is_invisible_until_commit`] | a reader sees nothing of an open transaction; after its commit, everything |
//! | [`aborted_transaction_is_never_visible`] | an aborted transaction's messages never come, while a later committed one's do |
//!
//! Each check works on topics of its own ([`StreamHarness::fresh_topic`]) and returns
//! `Err(message)` naming its step rather than panicking. Run them with
//! [`stream_conformance_tests!`](crate::stream_conformance_tests).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::connector::{BuildContext, ConnectorConfig, ObjectLocation, Sink, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::stream::{
    InMessage, MessageSink, MessageSource, MessageTransaction, OutMessage, Position, Subscription,
    TransactionalSink, last_per_partition,
};

/// What the checks need: a sink, sources on any subscription, and fresh topics.
#[async_trait]
pub trait StreamHarness: Send + Sync {
    /// A producer on the broker.
    fn sink(&self) -> Arc<dyn MessageSink>;
    /// Opens a consumer of `subscription` (joins the group).
    async fn source(&self, subscription: &Subscription) -> Result<Box<dyn MessageSource>>;
    /// A topic no one has used, named after `check` (created when the broker needs it).
    async fn fresh_topic(&self, check: &str) -> Result<String>;
    /// A group id no one has used.
    fn fresh_group(&self, check: &str) -> String {
        format!("{check}-{}", uuid::Uuid::new_v4().simple())
    }
    /// How long a check waits for messages it expects before failing (default 60 s: a consumer
    /// group join on a real broker takes seconds).
    fn expect_within(&self) -> Duration {
        Duration::from_secs(60)
    }
    /// Whether [`MessageSource::last_positions`] is exact on this broker (default). A broker
    /// known to answer low (tansu, in our tests) says false: the check then only requires
    /// positions that exist, at or before the real ends.
    fn exact_ends(&self) -> bool {
        true
    }
}

/// The names of the checks.
pub const STREAM_CHECKS: [&str; 6] = [
    "send_then_poll",
    "uncommitted_are_redelivered",
    "committed_are_not_redelivered",
    "groups_are_independent",
    "empty_poll_returns",
    "last_positions_are_the_ends",
];

/// How long a check waits to see that no further message comes.
const QUIET_FOR: Duration = Duration::from_secs(3);

fn msg(key: &str, payload: String) -> OutMessage {
    OutMessage {
        key: Some(Bytes::from(key.to_string())),
        payload: Bytes::from(payload),
    }
}

/// Polls until `n` messages came (failing after [`StreamHarness::expect_within`]), then for
/// [`QUIET_FOR`] more to catch extras.
async fn poll_n(
    h: &dyn StreamHarness,
    src: &mut dyn MessageSource,
    n: usize,
    step: &str,
) -> std::result::Result<Vec<InMessage>, String> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < n {
        if started.elapsed() > h.expect_within() {
            return Err(format!(
                "{step}: {} of {n} messages came within {:?}",
                got.len(),
                h.expect_within()
            ));
        }
        got.extend(
            src.poll(n.max(1), Duration::from_millis(500))
                .await
                .map_err(|e| format!("{step}: poll failed: {e}"))?,
        );
    }
    let quiet = Instant::now();
    while quiet.elapsed() < QUIET_FOR {
        got.extend(
            src.poll(n.max(1), Duration::from_millis(300))
                .await
                .map_err(|e| format!("{step}: poll failed: {e}"))?,
        );
    }
    Ok(got)
}

fn payloads(msgs: &[InMessage]) -> Vec<String> {
    let mut v: Vec<String> = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    v.sort();
    v
}

/// Messages `k-i` for `i` in `range`, keyed `key-(i % 3)`; payloads sort in send order.
fn numbered(range: std::ops::Range<usize>) -> Vec<OutMessage> {
    range
        .map(|i| msg(&format!("key-{}", i % 3), format!("m-{i:05}")))
        .collect()
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m-{i:05}")).collect()
}

/// Every message sent in three batches comes back once; within a key (one partition), in send
/// order.
pub async fn send_then_poll(h: &dyn StreamHarness) -> std::result::Result<(), String> {
    let topic = h
        .fresh_topic("send_then_poll")
        .await
        .map_err(|e| e.to_string())?;
    let sink = h.sink();
    for r in [0..10, 10..11, 11..40] {
        sink.send(&topic, &numbered(r))
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let sub = Subscription {
        topic: topic.clone(),
        group_id: h.fresh_group("send_then_poll"),
    };
    let mut src = h.source(&sub).await.map_err(|e| format!("open: {e}"))?;
    let got = poll_n(h, src.as_mut(), 40, "poll").await?;
    if payloads(&got) != names(0..40) {
        return Err(format!(
            "polled {} messages, not the 40 sent once each: {:?}",
            got.len(),
            payloads(&got)
        ));
    }
    // order within a partition is send order (messages of one key share a partition)
    let mut by_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for m in &got {
        by_partition.entry(m.position.partition).or_default().push((
            m.position.offset,
            String::from_utf8_lossy(&m.payload).into(),
        ));
    }
    for (p, list) in by_partition {
        let mut sorted = list.clone();
        sorted.sort();
        if list != sorted {
            return Err(format!(
                "partition {p}: messages polled out of offset order"
            ));
        }
        let texts: Vec<&String> = sorted.iter().map(|(_, t)| t).collect();
        if texts.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("partition {p}: offsets are not in send order"));
        }
    }
    Ok(())
}

/// Poll everything, commit part of it, reopen on the same group: exactly the uncommitted
/// messages come again.
pub async fn uncommitted_are_redelivered(h: &dyn StreamHarness) -> std::result::Result<(), String> {
    let topic = h
        .fresh_topic("uncommitted_are_redelivered")
        .await
        .map_err(|e| e.to_string())?;
    h.sink()
        .send(&topic, &numbered(0..20))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let sub = Subscription {
        topic,
        group_id: h.fresh_group("uncommitted_are_redelivered"),
    };
    let mut first = h.source(&sub).await.map_err(|e| format!("open: {e}"))?;
    let got = poll_n(h, first.as_mut(), 20, "first poll").await?;
    // commit, per partition, the first half of what that partition gave
    let mut by_partition: BTreeMap<i32, Vec<Position>> = BTreeMap::new();
    for m in &got {
        by_partition
            .entry(m.position.partition)
            .or_default()
            .push(m.position);
    }
    let mut done = Vec::new();
    for list in by_partition.values_mut() {
        list.sort();
        done.extend(list.iter().take(list.len() / 2).copied());
    }
    let committed = last_per_partition(done.iter().copied());
    first
        .commit(&committed)
        .await
        .map_err(|e| format!("commit: {e}"))?;
    drop(first);
    let expected: Vec<String> = {
        let mut v: Vec<String> = got
            .iter()
            .filter(|m| {
                committed
                    .iter()
                    .find(|c| c.partition == m.position.partition)
                    .is_none_or(|c| m.position.offset > c.offset)
            })
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        v.sort();
        v
    };
    let mut second = h.source(&sub).await.map_err(|e| format!("reopen: {e}"))?;
    let again = poll_n(h, second.as_mut(), expected.len(), "poll after reopening").await?;
    if payloads(&again) != expected {
        return Err(format!(
            "after committing {} of 20, a reopened source got {:?}, expected the uncommitted {:?}",
            20 - expected.len(),
            payloads(&again),
            expected
        ));
    }
    Ok(())
}

/// Commit everything, reopen: nothing comes again; messages sent later do.
pub async fn committed_are_not_redelivered(
    h: &dyn StreamHarness,
) -> std::result::Result<(), String> {
    let topic = h
        .fresh_topic("committed_are_not_redelivered")
        .await
        .map_err(|e| e.to_string())?;
    let sink = h.sink();
    sink.send(&topic, &numbered(0..12))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let sub = Subscription {
        topic: topic.clone(),
        group_id: h.fresh_group("committed_are_not_redelivered"),
    };
    let mut first = h.source(&sub).await.map_err(|e| format!("open: {e}"))?;
    let got = poll_n(h, first.as_mut(), 12, "first poll").await?;
    first
        .commit(&last_per_partition(got.iter().map(|m| m.position)))
        .await
        .map_err(|e| format!("commit: {e}"))?;
    drop(first);
    sink.send(&topic, &numbered(12..15))
        .await
        .map_err(|e| format!("second send: {e}"))?;
    let mut second = h.source(&sub).await.map_err(|e| format!("reopen: {e}"))?;
    let again = poll_n(h, second.as_mut(), 3, "poll after reopening").await?;
    if payloads(&again) != names(12..15) {
        return Err(format!(
            "after committing everything, a reopened source got {:?}, expected only the 3 \
             messages sent later",
            payloads(&again)
        ));
    }
    Ok(())
}

/// A new group reads from the start although another group committed everything.
pub async fn groups_are_independent(h: &dyn StreamHarness) -> std::result::Result<(), String> {
    let topic = h
        .fresh_topic("groups_are_independent")
        .await
        .map_err(|e| e.to_string())?;
    h.sink()
        .send(&topic, &numbered(0..5))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let a = Subscription {
        topic: topic.clone(),
        group_id: h.fresh_group("groups_are_independent-a"),
    };
    let mut src = h.source(&a).await.map_err(|e| format!("open a: {e}"))?;
    let got = poll_n(h, src.as_mut(), 5, "poll a").await?;
    src.commit(&last_per_partition(got.iter().map(|m| m.position)))
        .await
        .map_err(|e| format!("commit a: {e}"))?;
    drop(src);
    let b = Subscription {
        topic,
        group_id: h.fresh_group("groups_are_independent-b"),
    };
    let mut src = h.source(&b).await.map_err(|e| format!("open b: {e}"))?;
    let got = poll_n(h, src.as_mut(), 5, "poll b").await?;
    if payloads(&got) != names(0..5) {
        return Err(format!(
            "a new group got {:?}, expected all 5 messages",
            payloads(&got)
        ));
    }
    Ok(())
}

/// Polling an empty topic returns an empty batch.
pub async fn empty_poll_returns(h: &dyn StreamHarness) -> std::result::Result<(), String> {
    let topic = h
        .fresh_topic("empty_poll_returns")
        .await
        .map_err(|e| e.to_string())?;
    let sub = Subscription {
        topic,
        group_id: h.fresh_group("empty_poll_returns"),
    };
    let mut src = h.source(&sub).await.map_err(|e| format!("open: {e}"))?;
    for _ in 0..3 {
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            src.poll(10, Duration::from_millis(300)),
        )
        .await
        .map_err(|_| "poll of an empty topic did not return within 30 s".to_string())?
        .map_err(|e| format!("poll: {e}"))?;
        if !got.is_empty() {
            return Err(format!("an empty topic gave {} messages", got.len()));
        }
    }
    Ok(())
}

/// [`MessageSource::last_positions`]: nothing for an empty topic; after sends, per partition,
/// exactly the offset of the last message polled from it.
pub async fn last_positions_are_the_ends(h: &dyn StreamHarness) -> std::result::Result<(), String> {
    let topic = h
        .fresh_topic("last_positions_are_the_ends")
        .await
        .map_err(|e| e.to_string())?;
    let sub = Subscription {
        topic: topic.clone(),
        group_id: h.fresh_group("last_positions_are_the_ends"),
    };
    let mut src = h.source(&sub).await.map_err(|e| format!("open: {e}"))?;
    let empty = src
        .last_positions()
        .await
        .map_err(|e| format!("last_positions of an empty topic: {e}"))?;
    if !empty.is_empty() {
        return Err(format!("an empty topic ends at {empty:?}"));
    }
    h.sink()
        .send(&topic, &numbered(0..9))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let got = poll_n(h, src.as_mut(), 9, "poll").await?;
    let mut ends = src
        .last_positions()
        .await
        .map_err(|e| format!("last_positions: {e}"))?;
    ends.sort();
    let expected = last_per_partition(got.iter().map(|m| m.position));
    if !h.exact_ends() {
        let ok = !ends.is_empty()
            && ends.iter().all(|e| {
                expected
                    .iter()
                    .any(|x| x.partition == e.partition && (0..=x.offset).contains(&e.offset))
            });
        if !ok {
            return Err(format!(
                "last_positions said {ends:?}; the last messages polled are at {expected:?}"
            ));
        }
        return Ok(());
    }
    if ends != expected {
        return Err(format!(
            "last_positions said {ends:?}; the last messages polled are at {expected:?}"
        ));
    }
    Ok(())
}

/// Expands to one `#[test]` per stream conformance check, each on a fresh harness from `$make`
/// (an `async fn` returning a type that implements [`StreamHarness`]). Optional attributes
/// apply to every test.
#[macro_export]
macro_rules! stream_conformance_tests {
    ($make:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::__stream_test!($make, [$(#[$attr])*], send_then_poll);
        $crate::__stream_test!($make, [$(#[$attr])*], uncommitted_are_redelivered);
        $crate::__stream_test!($make, [$(#[$attr])*], committed_are_not_redelivered);
        $crate::__stream_test!($make, [$(#[$attr])*], groups_are_independent);
        $crate::__stream_test!($make, [$(#[$attr])*], empty_poll_returns);
        $crate::__stream_test!($make, [$(#[$attr])*], last_positions_are_the_ends);
    };
}

/// One test of [`stream_conformance_tests!`](crate::stream_conformance_tests). Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __stream_test {
    ($make:expr, [$(#[$attr:meta])*], $name:ident) => {
        #[test]
        $(#[$attr])*
        fn $name() {
            $crate::testkit::block_on(async {
                let harness = ($make)().await;
                let result = $crate::testkit::stream::$name(&harness).await;
                if let Err(message) = result {
                    panic!(
                        "stream conformance check {} failed: {message}",
                        ::std::stringify!($name)
                    );
                }
            });
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------------

/// A [`StreamHarness`] whose broker also takes transactions. Its sources must read committed
/// messages only (Kafka: `isolation.level=read_committed`, librdkafka's default).
pub trait TransactionHarness: StreamHarness {
    /// A transactional producer on the broker.
    fn transactional_sink(&self) -> Arc<dyn TransactionalSink>;
}

/// The names of the transaction checks.
pub const TRANSACTION_CHECKS: [&str; 3] = [
    "transaction_commits_all_topics",
    "transaction_is_invisible_until_commit",
    "aborted_transaction_is_never_visible",
];

async fn fresh_source(
    h: &dyn StreamHarness,
    topic: &str,
    check: &str,
) -> std::result::Result<Box<dyn MessageSource>, String> {
    let sub = Subscription {
        topic: topic.to_string(),
        group_id: h.fresh_group(check),
    };
    h.source(&sub).await.map_err(|e| format!("open: {e}"))
}

/// One transaction, two topics, three batches: after the commit, each topic holds exactly what
/// was sent to it.
pub async fn transaction_commits_all_topics<H: TransactionHarness>(
    h: &H,
) -> std::result::Result<(), String> {
    let check = "transaction_commits_all_topics";
    let a = h.fresh_topic(check).await.map_err(|e| e.to_string())?;
    let b = h.fresh_topic(check).await.map_err(|e| e.to_string())?;
    let mut tx = h
        .transactional_sink()
        .begin()
        .await
        .map_err(|e| format!("begin: {e}"))?;
    for (topic, r) in [(&a, 0..10), (&b, 0..4), (&a, 10..25)] {
        tx.send(topic, &numbered(r))
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    tx.commit().await.map_err(|e| format!("commit: {e}"))?;
    for (topic, n) in [(&a, 25), (&b, 4)] {
        let mut src = fresh_source(h, topic, check).await?;
        let got = poll_n(h, src.as_mut(), n, "poll after commit").await?;
        if payloads(&got) != names(0..n) {
            return Err(format!(
                "after the commit, a topic sent {n} messages gave {:?}",
                payloads(&got)
            ));
        }
    }
    Ok(())
}

/// While a transaction is open, a reader of committed messages gets nothing of it; after the
/// commit, everything.
pub async fn transaction_is_invisible_until_commit<H: TransactionHarness>(
    h: &H,
) -> std::result::Result<(), String> {
    let check = "transaction_is_invisible_until_commit";
    let topic = h.fresh_topic(check).await.map_err(|e| e.to_string())?;
    let mut tx = h
        .transactional_sink()
        .begin()
        .await
        .map_err(|e| format!("begin: {e}"))?;
    tx.send(&topic, &numbered(0..8))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut src = fresh_source(h, &topic, check).await?;
    let quiet = Instant::now();
    while quiet.elapsed() < QUIET_FOR {
        let got = src
            .poll(10, Duration::from_millis(300))
            .await
            .map_err(|e| format!("poll before commit: {e}"))?;
        if !got.is_empty() {
            return Err(format!(
                "a reader of committed messages got {} messages of an open transaction",
                got.len()
            ));
        }
    }
    tx.commit().await.map_err(|e| format!("commit: {e}"))?;
    let got = poll_n(h, src.as_mut(), 8, "poll after commit").await?;
    if payloads(&got) != names(0..8) {
        return Err(format!(
            "after the commit, the reader got {:?}, expected the 8 sent",
            payloads(&got)
        ));
    }
    Ok(())
}

/// An aborted transaction's messages never come; a later committed transaction's do (so the
/// reader has read past where the aborted ones were).
pub async fn aborted_transaction_is_never_visible<H: TransactionHarness>(
    h: &H,
) -> std::result::Result<(), String> {
    let check = "aborted_transaction_is_never_visible";
    let topic = h.fresh_topic(check).await.map_err(|e| e.to_string())?;
    let sink = h.transactional_sink();
    let mut tx = sink.begin().await.map_err(|e| format!("begin: {e}"))?;
    tx.send(&topic, &numbered(0..6))
        .await
        .map_err(|e| format!("send: {e}"))?;
    tx.abort().await.map_err(|e| format!("abort: {e}"))?;
    let mut tx = sink
        .begin()
        .await
        .map_err(|e| format!("second begin: {e}"))?;
    tx.send(&topic, &numbered(6..9))
        .await
        .map_err(|e| format!("second send: {e}"))?;
    tx.commit()
        .await
        .map_err(|e| format!("second commit: {e}"))?;
    let mut src = fresh_source(h, &topic, check).await?;
    let got = poll_n(h, src.as_mut(), 3, "poll").await?;
    if payloads(&got) != names(6..9) {
        return Err(format!(
            "after an aborted and a committed transaction, a reader got {:?}, expected only the \
             3 committed",
            payloads(&got)
        ));
    }
    Ok(())
}

/// Expands to one `#[test]` per transaction check, each on a fresh harness from `$make` (an
/// `async fn` returning a type that implements [`TransactionHarness`]).
///
/// `aborted: [#[…]]` adds attributes to [`aborted_transaction_is_never_visible`] only (an
/// `#[ignore = "…"]` for a test broker known to show aborted messages — say which, and why).
#[macro_export]
macro_rules! transaction_conformance_tests {
    ($make:expr, aborted: [$(#[$aattr:meta])*] $(, #[$attr:meta])* $(,)?) => {
        $crate::__stream_test!($make, [$(#[$attr])*], transaction_commits_all_topics);
        $crate::__stream_test!($make, [$(#[$attr])*], transaction_is_invisible_until_commit);
        $crate::__stream_test!(
            $make,
            [$(#[$attr])* $(#[$aattr])*],
            aborted_transaction_is_never_visible
        );
    };
    ($make:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::__stream_test!($make, [$(#[$attr])*], transaction_commits_all_topics);
        $crate::__stream_test!($make, [$(#[$attr])*], transaction_is_invisible_until_commit);
        $crate::__stream_test!($make, [$(#[$attr])*], aborted_transaction_is_never_visible);
    };
}

// ---------------------------------------------------------------------------------------------
// The in-memory bus
// ---------------------------------------------------------------------------------------------

/// An in-memory message bus (one partition per topic) with fault injection. Registered as the
/// connector `{ "type": "memory_bus", "bus": "NAME" }` for a bus made with
/// [`MemoryBus::register`].
#[derive(Debug, Default)]
pub struct MemoryBus {
    name: String,
    topics: Mutex<HashMap<String, Vec<OutMessage>>>,
    committed: Mutex<HashMap<(String, String), i64>>,
    down: AtomicBool,
    sends: AtomicU64,
    fail_tx_commit: AtomicBool,
    tx_committed: AtomicU64,
    tx_aborted: AtomicU64,
}

fn buses() -> &'static Mutex<HashMap<String, Arc<MemoryBus>>> {
    static BUSES: OnceLock<Mutex<HashMap<String, Arc<MemoryBus>>>> = OnceLock::new();
    BUSES.get_or_init(Default::default)
}

impl MemoryBus {
    /// A new, empty bus reachable as `{ "type": "memory_bus", "bus": name }`.
    pub fn register(name: &str) -> Arc<MemoryBus> {
        let bus = Arc::new(MemoryBus {
            name: name.to_string(),
            ..Default::default()
        });
        buses()
            .lock()
            .expect("buses")
            .insert(name.to_string(), bus.clone());
        bus
    }

    /// The messages of `topic`, in order.
    pub fn messages(&self, topic: &str) -> Vec<OutMessage> {
        self.topics
            .lock()
            .expect("topics")
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }

    /// While `down`, every send and check fails with a transient error.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Successful send calls so far.
    pub fn sends(&self) -> u64 {
        self.sends.load(Ordering::SeqCst)
    }

    /// While `fail`, every transaction commit fails (its messages are discarded, as a broker
    /// aborts a transaction whose commit failed).
    pub fn fail_transaction_commits(&self, fail: bool) {
        self.fail_tx_commit.store(fail, Ordering::SeqCst);
    }

    /// Transactions committed and aborted so far (a dropped transaction counts as aborted).
    pub fn transactions(&self) -> (u64, u64) {
        (
            self.tx_committed.load(Ordering::SeqCst),
            self.tx_aborted.load(Ordering::SeqCst),
        )
    }

    fn down_error(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Transient,
                format!("memory bus {} is down", self.name),
            ));
        }
        Ok(())
    }

    /// A source on `subscription`, starting after the group's committed position.
    pub fn source(self: &Arc<Self>, subscription: &Subscription) -> MemoryBusSource {
        let next = self
            .committed
            .lock()
            .expect("committed")
            .get(&(subscription.topic.clone(), subscription.group_id.clone()))
            .map_or(0, |c| c + 1);
        MemoryBusSource {
            bus: self.clone(),
            subscription: subscription.clone(),
            next,
        }
    }
}

#[async_trait]
impl MessageSink for MemoryBus {
    async fn send(&self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Transient,
                format!("memory bus {} is down", self.name),
            ));
        }
        self.topics
            .lock()
            .expect("topics")
            .entry(topic.to_string())
            .or_default()
            .extend_from_slice(messages);
        self.sends.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Transient,
                format!("memory bus {} is down", self.name),
            ));
        }
        Ok(())
    }

    fn describe(&self, topic: &str) -> String {
        format!("memory_bus://{}/{topic}", self.name)
    }
}

/// A [`MemoryBus`] as a [`TransactionalSink`]: its transactions ([`MemoryTransaction`]) hold
/// messages aside and append them to their topics on commit.
#[derive(Debug)]
pub struct MemoryBusTransactions(pub Arc<MemoryBus>);

#[async_trait]
impl TransactionalSink for MemoryBusTransactions {
    async fn begin(&self) -> Result<Box<dyn MessageTransaction>> {
        self.0.down_error()?;
        Ok(Box::new(MemoryTransaction {
            bus: self.0.clone(),
            pending: Vec::new(),
            done: false,
        }))
    }

    fn describe(&self, topic: &str) -> String {
        format!("memory_bus://{}/{topic}", self.0.name)
    }
}

/// An open transaction on a [`MemoryBus`]: its messages are held aside and appended to their
/// topics, all at once, on commit.
pub struct MemoryTransaction {
    bus: Arc<MemoryBus>,
    pending: Vec<(String, Vec<OutMessage>)>,
    done: bool,
}

impl std::fmt::Debug for MemoryTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransaction")
            .field("bus", &self.bus.name)
            .field("batches", &self.pending.len())
            .finish()
    }
}

#[async_trait]
impl MessageTransaction for MemoryTransaction {
    async fn send(&mut self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        self.bus.down_error()?;
        self.pending.push((topic.to_string(), messages.to_vec()));
        self.bus.sends.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        let failed = self.bus.down_error().err().or_else(|| {
            self.bus.fail_tx_commit.load(Ordering::SeqCst).then(|| {
                Error::new(
                    ErrorKind::Transient,
                    format!(
                        "memory bus {}: injected transaction commit failure",
                        self.bus.name
                    ),
                )
            })
        });
        if let Some(e) = failed {
            self.bus.tx_aborted.fetch_add(1, Ordering::SeqCst);
            return Err(e);
        }
        let mut topics = self.bus.topics.lock().expect("topics");
        for (topic, msgs) in self.pending.drain(..) {
            topics.entry(topic).or_default().extend(msgs);
        }
        self.bus.tx_committed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        self.pending.clear();
        self.bus.tx_aborted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for MemoryTransaction {
    fn drop(&mut self) {
        if !self.done {
            // neither committed nor aborted: a broker aborts it when it times out
            self.bus.tx_aborted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A consumer of a [`MemoryBus`] topic.
#[derive(Debug)]
pub struct MemoryBusSource {
    bus: Arc<MemoryBus>,
    subscription: Subscription,
    next: i64,
}

#[async_trait]
impl MessageSource for MemoryBusSource {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<InMessage>> {
        let started = Instant::now();
        loop {
            let out: Vec<InMessage> = {
                let topics = self.bus.topics.lock().expect("topics");
                let all = topics
                    .get(&self.subscription.topic)
                    .map_or(&[][..], |v| v.as_slice());
                all.iter()
                    .enumerate()
                    .skip(self.next as usize)
                    .take(max)
                    .map(|(i, m)| InMessage {
                        payload: m.payload.clone(),
                        position: Position {
                            partition: 0,
                            offset: i as i64,
                        },
                    })
                    .collect()
            };
            if let Some(last) = out.last() {
                self.next = last.position.offset + 1;
                return Ok(out);
            }
            if started.elapsed() >= wait {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn commit(&mut self, done: &[Position]) -> Result<()> {
        let mut c = self.bus.committed.lock().expect("committed");
        for p in done {
            let e = c
                .entry((
                    self.subscription.topic.clone(),
                    self.subscription.group_id.clone(),
                ))
                .or_insert(p.offset);
            *e = (*e).max(p.offset);
        }
        Ok(())
    }

    async fn last_positions(&mut self) -> Result<Vec<Position>> {
        let n = self
            .bus
            .topics
            .lock()
            .expect("topics")
            .get(&self.subscription.topic)
            .map_or(0, Vec::len);
        Ok(if n == 0 {
            Vec::new()
        } else {
            vec![Position {
                partition: 0,
                offset: n as i64 - 1,
            }]
        })
    }
}

/// `{ "type": "memory_bus", "bus": "NAME" }`: a [`MemoryBus`] as a connector.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBusConfig {
    /// The name the bus was registered under.
    pub bus: String,
}

impl MemoryBusConfig {
    fn bus(&self) -> Result<Arc<MemoryBus>> {
        buses()
            .lock()
            .expect("buses")
            .get(&self.bus)
            .cloned()
            .ok_or_else(|| Error::config(format!("no memory bus named {:?}", self.bus)))
    }
}

#[async_trait]
#[typetag::serde(name = "memory_bus")]
impl ConnectorConfig for MemoryBusConfig {
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    async fn build_source(&self, _: &BuildContext) -> Result<Arc<dyn Source>> {
        Err(Error::not_supported("a memory bus has topics, not objects"))
    }

    async fn build_sink(&self, _: &BuildContext) -> Result<Arc<dyn Sink>> {
        Err(Error::not_supported("a memory bus has topics, not objects"))
    }

    fn location(&self, _: &BuildContext, path: &str) -> Result<ObjectLocation> {
        Ok(ObjectLocation::new("memory_bus", &self.bus, path))
    }

    async fn build_message_source(
        &self,
        _: &BuildContext,
        subscription: &Subscription,
    ) -> Result<Box<dyn MessageSource>> {
        Ok(Box::new(self.bus()?.source(subscription)))
    }

    async fn build_message_sink(&self, _: &BuildContext) -> Result<Arc<dyn MessageSink>> {
        Ok(self.bus()?)
    }

    fn build_transactional_sink(&self, _: &BuildContext) -> Result<Arc<dyn TransactionalSink>> {
        Ok(Arc::new(MemoryBusTransactions(self.bus()?)))
    }
}

impl TransactionHarness for MemoryBusHarness {
    fn transactional_sink(&self) -> Arc<dyn TransactionalSink> {
        Arc::new(MemoryBusTransactions(self.0.clone()))
    }
}

/// A [`StreamHarness`] on a [`MemoryBus`].
#[derive(Debug)]
pub struct MemoryBusHarness(pub Arc<MemoryBus>);

#[async_trait]
impl StreamHarness for MemoryBusHarness {
    fn sink(&self) -> Arc<dyn MessageSink> {
        self.0.clone()
    }

    async fn source(&self, subscription: &Subscription) -> Result<Box<dyn MessageSource>> {
        Ok(Box::new(self.0.source(subscription)))
    }

    async fn fresh_topic(&self, check: &str) -> Result<String> {
        Ok(format!("{check}-{}", uuid::Uuid::new_v4().simple()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn harness() -> MemoryBusHarness {
        MemoryBusHarness(MemoryBus::register(&format!(
            "conformance-{}",
            uuid::Uuid::new_v4().simple()
        )))
    }

    crate::stream_conformance_tests!(harness);
    crate::transaction_conformance_tests!(harness);

    #[test]
    fn a_bus_without_transactions_fails_the_suite() {
        // a "transaction" that sends at once is visible before its commit and after its abort:
        // the suite must catch it
        #[derive(Debug)]
        struct Eager(Arc<MemoryBus>);
        #[async_trait]
        impl MessageTransaction for Eager {
            async fn send(&mut self, topic: &str, messages: &[OutMessage]) -> Result<()> {
                MessageSink::send(self.0.as_ref(), topic, messages).await
            }
            async fn commit(self: Box<Self>) -> Result<()> {
                Ok(())
            }
            async fn abort(self: Box<Self>) -> Result<()> {
                Ok(())
            }
        }
        #[derive(Debug)]
        struct NoTx(Arc<MemoryBus>);
        #[async_trait]
        impl TransactionalSink for NoTx {
            async fn begin(&self) -> Result<Box<dyn MessageTransaction>> {
                Ok(Box::new(Eager(self.0.clone())))
            }
            fn describe(&self, topic: &str) -> String {
                topic.to_string()
            }
        }
        struct Leaky(MemoryBusHarness);
        #[async_trait]
        impl StreamHarness for Leaky {
            fn sink(&self) -> Arc<dyn MessageSink> {
                self.0.sink()
            }
            async fn source(&self, s: &Subscription) -> Result<Box<dyn MessageSource>> {
                self.0.source(s).await
            }
            async fn fresh_topic(&self, check: &str) -> Result<String> {
                self.0.fresh_topic(check).await
            }
            fn expect_within(&self) -> Duration {
                Duration::from_secs(2)
            }
        }
        impl TransactionHarness for Leaky {
            fn transactional_sink(&self) -> Arc<dyn TransactionalSink> {
                Arc::new(NoTx(self.0.0.clone()))
            }
        }
        crate::testkit::block_on(async {
            let h = Leaky(harness().await);
            assert!(
                super::transaction_is_invisible_until_commit(&h)
                    .await
                    .is_err()
            );
            assert!(
                super::aborted_transaction_is_never_visible(&h)
                    .await
                    .is_err()
            );
            super::transaction_commits_all_topics(&h).await.unwrap();
        });
    }

    #[test]
    fn a_failed_transaction_commit_shows_nothing() {
        crate::testkit::block_on(async {
            let bus = MemoryBus::register("failing-tx");
            bus.fail_transaction_commits(true);
            let mut tx = MemoryBusTransactions(bus.clone()).begin().await.unwrap();
            tx.send("t", &numbered(0..3)).await.unwrap();
            assert!(tx.commit().await.is_err());
            assert!(bus.messages("t").is_empty());
            assert_eq!(bus.transactions(), (0, 1));
        });
    }

    #[test]
    fn a_bus_that_loses_commits_fails_the_suite() {
        // a source that forgets nothing it polled (commits everything on poll) loses messages
        // on restart: the suite must catch it
        #[derive(Debug)]
        struct Eager(MemoryBusSource);
        #[async_trait]
        impl MessageSource for Eager {
            async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<InMessage>> {
                let got = self.0.poll(max, wait).await?;
                let last = last_per_partition(got.iter().map(|m| m.position));
                self.0.commit(&last).await?;
                Ok(got)
            }
            async fn commit(&mut self, done: &[Position]) -> Result<()> {
                self.0.commit(done).await
            }
        }
        struct Lossy(Arc<MemoryBus>);
        #[async_trait]
        impl StreamHarness for Lossy {
            fn sink(&self) -> Arc<dyn MessageSink> {
                self.0.clone()
            }
            async fn source(&self, s: &Subscription) -> Result<Box<dyn MessageSource>> {
                Ok(Box::new(Eager(self.0.source(s))))
            }
            async fn fresh_topic(&self, check: &str) -> Result<String> {
                Ok(check.to_string())
            }
            fn expect_within(&self) -> Duration {
                Duration::from_secs(2)
            }
        }
        let h = Lossy(MemoryBus::register("lossy"));
        let r = crate::testkit::block_on(super::uncommitted_are_redelivered(&h));
        assert!(r.is_err(), "a source that commits on poll passed");
    }

    #[test]
    fn a_down_bus_refuses_sends() {
        crate::testkit::block_on(async {
            let bus = MemoryBus::register("down");
            bus.set_down(true);
            assert!(bus.send("t", &numbered(0..1)).await.is_err());
            assert!(bus.check().await.is_err());
            bus.set_down(false);
            bus.send("t", &numbered(0..1)).await.unwrap();
            assert_eq!(bus.messages("t").len(), 1);
        });
    }
}
