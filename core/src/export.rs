//! The exporters of a stream job (SPEC §11): a topic's messages, and the stream's keys, written
//! periodically as objects through any object connector.
//!
//! # The batch exporter: exactly once in the exported files
//!
//! A [`BatchExporter`] reads topic `from` as a consumer ([`MessageSource`]) and, every interval,
//! writes what it read since the last export as one new object per partition:
//! `<path_prefix>/<topic>-<partition>-<first offset>-<last offset>.jsonl`, each message payload
//! one line, byte for byte (the messages are already encrypted or derived JSON objects, so
//! stock Tink decrypts an exported encrypted file with the keys export). Every object goes
//! through the [`Sink`] create → write → finish → commit steps, so it appears whole or not at
//! all.
//!
//! **The object names are the state, not the consumer group's offsets.** On start the exporter
//! lists its prefix, parses the names and keeps, per partition, the highest last offset already
//! exported; every message at or below it is skipped. Consumer offsets are committed after the
//! objects (so a restart normally reads little again), but they are only a hint (a failed
//! offset commit is logged, not fatal):
//!
//! - killed before an object is committed: nothing is visible, the offsets were not committed,
//!   the messages are read again and exported under whatever name their next export gets — once;
//! - killed between the object commits and the offset commit (or between two partitions'
//!   objects): the messages come again from the broker, but the listing says they are exported,
//!   so they are skipped — no second object over a longer range;
//! - an object name is a pure function of the messages in it, and a range starts right after the
//!   previous object's last offset, so a restart can at most write the same name with the same
//!   bytes.
//!
//! So a message is in the exported files exactly once across any number of `kill -9`, provided
//! one exporter writes a prefix (two streams exporting one topic to one prefix would race;
//! [`prepare_exporters`] refuses overlapping prefixes within a job). Offsets in a partition need
//! not be contiguous (compaction, transaction markers): only "after the last exported offset"
//! matters. When the consumer group's offsets are lost (expired), the topic is read from its
//! start again and everything already exported is skipped — slow, not wrong.
//!
//! `from` must be the encrypted or a derived topic of the same job: the exporter then knows what
//! it holds (a derived topic holds plaintext of consented purposes: its objects are private),
//! reads it with the output's connector, and its final export on shutdown comes after the job's
//! last message. The rejected topic is refused: its messages are raw events, possibly not JSON
//! and not one line each. CSV is refused too: events are JSON objects with a nested `strmMeta`
//! object and optional fields, which have no fixed columns; JSON Lines keeps them byte-identical.
//!
//! # The keys exporter
//!
//! A [`KeysExporter`] writes, every interval, the keys of the stream's key group created in
//! `[from_ms, to_ms)` as a keys CSV (SPEC §2) named `<path_prefix>/keys-<from_ms>-<to_ms>.csv`,
//! private (mode 0600 on local disk). Again the names are the state: on start the highest
//! `to_ms` found is where the next range starts; the first range starts at 0, so keys created
//! before the stream (by a batch job of the same group, or before the first export) are in it.
//! `to_ms` is `now − `[`KEYS_SAFETY_LAG`]: a key's creation time is taken by the writer before
//! its transaction commits (and by the clock of whichever worker made it), so a key can become
//! visible a moment after a later-stamped one; cutting behind the clock leaves it in the next
//! range instead of losing it. On shutdown the exporter waits out the lag and cuts after the
//! stream's last event, so the keys export covers every message exported before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use crate::connector::{
    BuildContext, ObjectLocation, ObjectWriter, Sink, Source, join_path, normalize_prefix,
};
use crate::error::{Error, Result};
use crate::job::DataConnectorRef;
use crate::keystore::KeyStore;
use crate::stream::{InMessage, MessageSource, Position, Subscription};

/// How far behind the clock a keys export cuts (see the module doc).
pub const KEYS_SAFETY_LAG: Duration = Duration::from_secs(5);

/// At most this many payload bytes wait in memory for the next export; more starts an export
/// early.
pub const MAX_BUFFERED_BYTES: usize = 64 << 20;

/// How long a final export waits for the messages the topic had at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// `{ "from": T, "interval_seconds": 60, "target": { … } }`: one entry of `batch_exporters`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchExporterConfig {
    /// The topic exported: the job's encrypted topic or one of its derived topics.
    pub from: String,
    /// How often an export is written, in seconds (required, at least 1).
    #[serde(default)]
    pub interval_seconds: Option<u64>,
    /// Where the objects go.
    pub target: ExportTarget,
}

/// An object prefix of an object connector, and the file type of what is written there.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportTarget {
    /// The object connector.
    pub data_connector_ref: DataConnectorRef,
    /// The prefix the objects are written under (required; the names are the exporter's state,
    /// so nothing else should be written there).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// `{ "jsonl": {} }` (the default). CSV is refused: events have a nested `strmMeta` and
    /// optional fields, which have no fixed columns.
    #[serde(default)]
    pub data_type: Option<ExportDataType>,
}

/// The file type of an export.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportDataType {
    /// JSON Lines: one message per line, byte-identical to the message.
    Jsonl(NoOptions),
    /// CSV: refused (see [`ExportTarget::data_type`]).
    Csv(#[schemars(with = "serde_json::Value")] serde::de::IgnoredAny),
}

/// `{}`: no options.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// `{ "interval_seconds": 60, "target": { "data_connector_ref": …, "path_prefix": … } }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysExportConfig {
    /// How often the new keys are exported, in seconds (required, at least 1).
    #[serde(default)]
    pub interval_seconds: Option<u64>,
    /// Where the keys CSV objects go.
    pub target: KeysTarget,
}

/// The prefix keys exports are written under.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysTarget {
    /// The object connector.
    pub data_connector_ref: DataConnectorRef,
    /// The prefix (required).
    #[serde(default)]
    pub path_prefix: Option<String>,
}

/// One message topic of the job that may be exported: its name, the connector it is on, and
/// whether its content is plaintext personal data.
#[derive(Debug, Clone)]
pub struct ExportableTopic {
    /// The topic.
    pub topic: String,
    /// The connector's name.
    pub connector: String,
    /// Whether the exported objects must be private.
    pub private: bool,
    /// `encrypted_data.target`, `derived_data[0].target`.
    pub role: String,
}

/// A running batch exporter (see the module doc).
#[derive(Debug)]
pub struct BatchExporter {
    /// `batch_exporters[0]`, for messages.
    pub name: String,
    /// The topic's connector.
    pub connector: String,
    /// The topic and the exporter's consumer group.
    pub subscription: Subscription,
    prefix: String,
    sink: Arc<dyn Sink>,
    lister: Arc<dyn Source>,
    private: bool,
    interval: Duration,
    max_buffered: usize,
}

/// A running keys exporter (see the module doc).
#[derive(Debug)]
pub struct KeysExporter {
    prefix: String,
    sink: Arc<dyn Sink>,
    lister: Arc<dyn Source>,
    interval: Duration,
    lag: Duration,
    store: Arc<dyn KeyStore>,
    group: String,
    /// The format whose table encoder writes the keys (csv).
    format: Arc<dyn crate::format::Format>,
}

/// What an exporter wrote over its run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportStats {
    /// Objects committed.
    pub objects: u64,
    /// Messages (or keys) in them.
    pub items: u64,
}

fn interval(v: Option<u64>, field: &str) -> Result<Duration> {
    match v {
        Some(s) if s > 0 => Ok(Duration::from_secs(s)),
        Some(_) => Err(Error::config(format!(
            "{field}.interval_seconds: must be at least 1"
        ))),
        None => Err(Error::config(format!(
            "{field}.interval_seconds: missing; how often to export, in seconds"
        ))),
    }
}

fn prefix(v: &Option<String>, field: &str) -> Result<String> {
    let p = v.as_deref().map(str::trim).unwrap_or("");
    let p = p.trim_matches('/');
    if p.is_empty() {
        return Err(Error::config(format!(
            "{field}.target.path_prefix: missing; exports need a prefix of their own (the object \
             names there are the exporter's state)"
        )));
    }
    crate::connector::validate_object_path(p)
        .map_err(|e| e.context(format!("{field}.target.path_prefix")))?;
    Ok(normalize_prefix(p))
}

/// Where the job reads and writes, for the location checks of [`prepare_exporters`].
#[derive(Debug, Default)]
pub struct JobPlaces {
    /// What the job reads (its source topic), as `(location, role)`.
    pub reads: Vec<(ObjectLocation, String)>,
    /// What the job writes (its output topics), as `(location, role)`.
    pub writes: Vec<(ObjectLocation, String)>,
}

/// Everything [`prepare_exporters`] needs from the job and the config.
pub struct ExportSetup<'a> {
    /// The job file, for messages.
    pub job_file: &'a str,
    /// The config's connectors.
    pub connectors: &'a BTreeMap<String, Box<dyn crate::connector::ConnectorConfig>>,
    /// Where relative paths are resolved.
    pub ctx: &'a BuildContext,
    /// The topics `from` may name.
    pub topics: &'a [ExportableTopic],
    /// The job's places.
    pub places: &'a JobPlaces,
    /// The key store and group (for the keys exporter).
    pub store: Arc<dyn KeyStore>,
    /// The key group.
    pub group: &'a str,
}

/// Checks and builds a job's exporters: every error before any event is read. `from` must name
/// one of `topics` (not the rejected topic); intervals must be set and positive; every target
/// prefix must be on an object connector, and must not be (or be inside, or contain) another
/// export's prefix or anything the job reads or writes.
pub async fn prepare_exporters(
    batch: Vec<BatchExporterConfig>,
    keys: Option<KeysExportConfig>,
    s: &ExportSetup<'_>,
) -> Result<(Vec<BatchExporter>, Option<KeysExporter>)> {
    let shown = s.job_file;
    let connector = |name: &str, field: &str| {
        s.connectors.get(name).ok_or_else(|| {
            Error::config(format!(
                "{shown}: {field}.target.data_connector_ref.name: connector '{name}' is not \
                 defined in the config; defined: {}",
                s.connectors.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    // (prefix location, role) of every export, checked against each other and the job
    let mut taken: Vec<(ObjectLocation, String)> = Vec::new();
    let mut check_place = |loc: ObjectLocation, role: String| -> Result<()> {
        for (l, r) in s.places.reads.iter() {
            if loc.is_under(l) || l.is_under(&loc) {
                return Err(Error::config(format!(
                    "{shown}: {role}: {loc} is where the job reads {r}; an export must not \
                     write where the job reads"
                )));
            }
        }
        for (l, r) in s.places.writes.iter().chain(taken.iter()) {
            if loc.is_under(l) || l.is_under(&loc) {
                return Err(Error::config(format!(
                    "{shown}: {role}: {loc} overlaps {r} ({l}); every export needs a prefix of \
                     its own"
                )));
            }
        }
        taken.push((loc, role));
        Ok(())
    };

    let mut exporters = Vec::new();
    for (i, b) in batch.into_iter().enumerate() {
        let field = format!("batch_exporters[{i}]");
        let every = interval(b.interval_seconds, &field).map_err(|e| e.context(shown))?;
        let topic = if b.from.is_empty() {
            None
        } else {
            s.topics.iter().find(|t| t.topic == b.from)
        };
        let Some(topic) = topic else {
            return Err(Error::config(format!(
                "{shown}: {field}.from: {:?} is not a topic this job writes; a batch exporter \
                 exports the job's encrypted or derived topic: {}",
                b.from,
                s.topics
                    .iter()
                    .map(|t| t.topic.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        match b.target.data_type {
            None | Some(ExportDataType::Jsonl(_)) => {}
            Some(ExportDataType::Csv(_)) => {
                return Err(Error::not_supported(format!(
                    "{shown}: {field}.target.data_type: csv exports are not supported: events \
                     are JSON objects with a nested strmMeta object and optional fields, which \
                     have no fixed columns; use {{\"jsonl\": {{}}}} (byte-identical to the \
                     messages)"
                )));
            }
        }
        let prefix = prefix(&b.target.path_prefix, &field).map_err(|e| e.context(shown))?;
        let name = &b.target.data_connector_ref.name;
        let cfg = connector(name, &field)?;
        let loc = cfg
            .location(s.ctx, prefix.trim_end_matches('/'))
            .map_err(|e| e.context(format!("{shown}: {field}.target")))?;
        check_place(loc.clone(), format!("{field}.target"))?;
        let sink = cfg
            .build_sink(s.ctx)
            .await
            .map_err(|e| e.context(format!("{shown}: {field}.target: connector '{name}'")))?;
        let lister = cfg
            .build_source(s.ctx)
            .await
            .map_err(|e| e.context(format!("{shown}: {field}.target: connector '{name}'")))?;
        exporters.push(BatchExporter {
            name: field,
            connector: topic.connector.clone(),
            subscription: Subscription {
                topic: topic.topic.clone(),
                group_id: group_id(&topic.topic, &loc),
            },
            prefix,
            sink,
            lister,
            private: topic.private,
            interval: every,
            max_buffered: MAX_BUFFERED_BYTES,
        });
    }
    let keys =
        match keys {
            None => None,
            Some(k) => {
                let field = "encryption_keys_data";
                let every = interval(k.interval_seconds, field).map_err(|e| e.context(shown))?;
                let prefix = prefix(&k.target.path_prefix, field).map_err(|e| e.context(shown))?;
                let name = &k.target.data_connector_ref.name;
                let cfg = connector(name, field)?;
                let loc = cfg
                    .location(s.ctx, prefix.trim_end_matches('/'))
                    .map_err(|e| e.context(format!("{shown}: {field}.target")))?;
                check_place(loc, format!("{field}.target"))?;
                let format = crate::keys_export::keys_format(None)
                    .map_err(|e| e.context(format!("{shown}: {field}")))?;
                let sink = cfg.build_sink(s.ctx).await.map_err(|e| {
                    e.context(format!("{shown}: {field}.target: connector '{name}'"))
                })?;
                let lister = cfg.build_source(s.ctx).await.map_err(|e| {
                    e.context(format!("{shown}: {field}.target: connector '{name}'"))
                })?;
                Some(KeysExporter {
                    prefix,
                    sink,
                    lister,
                    interval: every,
                    lag: KEYS_SAFETY_LAG,
                    store: s.store.clone(),
                    group: s.group.to_string(),
                    format,
                })
            }
        };
    Ok((exporters, keys))
}

/// The exporter's consumer group: fixed for a topic and a target, so a restarted exporter
/// resumes near where it stopped (the object names decide; see the module doc).
fn group_id(topic: &str, target: &ObjectLocation) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{topic}\n{target}").as_bytes());
    let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("keylink-export-{hex}")
}

/// Polls `stop` once without waiting.
async fn stopped<F: std::future::Future<Output = ()>>(stop: &mut std::pin::Pin<&mut F>) -> bool {
    tokio::select! {
        biased;
        _ = stop.as_mut() => true,
        _ = std::future::ready(()) => false,
    }
}

/// Messages read but not yet exported, per partition.
#[derive(Default)]
struct Pending {
    by_partition: BTreeMap<i32, Vec<InMessage>>,
    bytes: usize,
    /// The highest position read per partition (exported or skipped): what to commit.
    read: BTreeMap<i32, i64>,
}

impl BatchExporter {
    /// The object name of a range.
    pub fn object_name(&self, partition: i32, first: i64, last: i64) -> String {
        join_path(
            &self.prefix,
            &format!(
                "{}-{partition}-{first}-{last}.jsonl",
                self.subscription.topic
            ),
        )
    }

    /// Per partition, the highest offset already in an exported object (from the names under
    /// the prefix).
    pub async fn exported(&self) -> Result<BTreeMap<i32, i64>> {
        let objects = self
            .lister
            .list(&self.prefix)
            .await
            .map_err(|e| e.context(format!("{}: listing the exported objects", self.name)))?;
        let mut out: BTreeMap<i32, i64> = BTreeMap::new();
        let head = format!("{}{}-", self.prefix, self.subscription.topic);
        for o in objects {
            let Some((p, _, last)) = o
                .path
                .strip_prefix(&head)
                .and_then(|rest| rest.strip_suffix(".jsonl"))
                .and_then(parse_range)
            else {
                continue;
            };
            let e = out.entry(p).or_insert(last);
            *e = (*e).max(last);
        }
        Ok(out)
    }

    /// Runs until `stop` resolves: reads the topic, exports every interval, and on stop reads
    /// what the topic holds at that moment (bounded by [`DRAIN_TIMEOUT`]) and exports it.
    pub async fn run(
        &self,
        source: &mut dyn MessageSource,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<ExportStats> {
        tokio::pin!(stop);
        let mut exported = self.exported().await?;
        let mut stats = ExportStats::default();
        let mut pending = Pending::default();
        let mut due = Instant::now() + self.interval;
        // polls are never cancelled: a source may have taken messages it has not returned yet
        while !stopped(&mut stop).await {
            let wait = due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            let got = source.poll(1000, wait).await?;
            self.take(got, &exported, &mut pending);
            if Instant::now() >= due || pending.bytes >= self.max_buffered {
                self.export(source, &mut pending, &mut exported, &mut stats)
                    .await?;
                due = Instant::now() + self.interval;
            }
        }
        // the final export: everything the topic holds now
        let target = match source.last_positions().await {
            Ok(t) => Some(t),
            Err(e) if e.kind() == crate::ErrorKind::NotSupported => None,
            Err(e) => return Err(e.context(format!("{}: reading the topic's end", self.name))),
        };
        let started = Instant::now();
        loop {
            let got = source.poll(1000, Duration::from_millis(300)).await?;
            let empty = got.is_empty();
            self.take(got, &exported, &mut pending);
            if pending.bytes >= self.max_buffered {
                self.export(source, &mut pending, &mut exported, &mut stats)
                    .await?;
            }
            // done once the ends known at the stop are read and the topic has nothing more
            // (a broker may answer the ends low: an empty poll is needed too)
            let reached = target.as_ref().is_none_or(|t| {
                t.iter().all(|p| {
                    pending
                        .read
                        .get(&p.partition)
                        .is_some_and(|&r| r >= p.offset)
                        || exported.get(&p.partition).is_some_and(|&r| r >= p.offset)
                })
            });
            let done = reached && empty;
            if done {
                break;
            }
            if started.elapsed() > DRAIN_TIMEOUT {
                tracing::warn!(
                    exporter = %self.name,
                    "the final export did not reach the topic's end within {}s; the rest is \
                     exported by the next run",
                    DRAIN_TIMEOUT.as_secs()
                );
                break;
            }
        }
        self.export(source, &mut pending, &mut exported, &mut stats)
            .await?;
        Ok(stats)
    }

    fn take(&self, got: Vec<InMessage>, exported: &BTreeMap<i32, i64>, pending: &mut Pending) {
        for m in got {
            let p = m.position;
            let r = pending.read.entry(p.partition).or_insert(p.offset);
            *r = (*r).max(p.offset);
            if exported.get(&p.partition).is_some_and(|&l| p.offset <= l) {
                continue; // already in an exported object
            }
            let list = pending.by_partition.entry(p.partition).or_default();
            if list.last().is_some_and(|l| l.position.offset >= p.offset) {
                continue; // read twice in one session (a rebalance): keep the first
            }
            pending.bytes += m.payload.len() + 1;
            list.push(m);
        }
    }

    /// Writes one object per partition of `pending`, then commits the positions read.
    async fn export(
        &self,
        source: &mut dyn MessageSource,
        pending: &mut Pending,
        exported: &mut BTreeMap<i32, i64>,
        stats: &mut ExportStats,
    ) -> Result<()> {
        for (&partition, msgs) in pending.by_partition.iter_mut() {
            let (Some(first), Some(last)) = (msgs.first(), msgs.last()) else {
                continue;
            };
            let (first, last) = (first.position.offset, last.position.offset);
            let path = self.object_name(partition, first, last);
            let mut bytes = Vec::with_capacity(msgs.iter().map(|m| m.payload.len() + 1).sum());
            for m in msgs.iter() {
                if m.payload.contains(&b'\n') {
                    return Err(Error::data(format!(
                        "{}: the message at partition {partition} offset {} is not one line; \
                         it cannot be a JSON Lines record",
                        self.name, m.position.offset
                    )));
                }
                bytes.extend_from_slice(&m.payload);
                bytes.push(b'\n');
            }
            write_object(&*self.sink, &path, Bytes::from(bytes), self.private)
                .await
                .map_err(|e| {
                    e.context(format!(
                        "{}: writing {}",
                        self.name,
                        self.sink.describe(&path)
                    ))
                })?;
            stats.objects += 1;
            stats.items += msgs.len() as u64;
            exported.insert(partition, last);
            tracing::debug!(
                exporter = %self.name,
                partition,
                first,
                last,
                "exported"
            );
            msgs.clear();
        }
        pending.by_partition.clear();
        pending.bytes = 0;
        let done: Vec<Position> = pending
            .read
            .iter()
            .map(|(&partition, &offset)| Position { partition, offset })
            .collect();
        // the offsets are a hint (the names are the state): a failed commit (a rebalance, a
        // broker restarting) only means more is read and skipped after a restart
        if let Err(e) = source.commit(&done).await {
            tracing::warn!(
                exporter = %self.name,
                error = %e,
                "committing the exported offsets failed; the next start skips what is exported"
            );
        }
        Ok(())
    }
}

/// `P-FIRST-LAST` → `(P, FIRST, LAST)`.
fn parse_range(rest: &str) -> Option<(i32, i64, i64)> {
    let mut it = rest.split('-');
    let p = it.next()?.parse::<i32>().ok()?;
    let first = it.next()?.parse::<i64>().ok()?;
    let last = it.next()?.parse::<i64>().ok()?;
    if it.next().is_some() || p < 0 || first < 0 || last < first {
        return None;
    }
    Some((p, first, last))
}

async fn write_object(sink: &dyn Sink, path: &str, data: Bytes, private: bool) -> Result<()> {
    let mut w: Box<dyn ObjectWriter> = if private {
        sink.create_private(path).await?
    } else {
        sink.create(path).await?
    };
    if let Err(e) = w.write(data).await {
        let _ = w.abort().await;
        return Err(e);
    }
    if let Err(e) = w.finish().await {
        let _ = w.abort().await;
        return Err(e);
    }
    w.commit().await
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl KeysExporter {
    /// The object name of a range of creation times.
    pub fn object_name(&self, from_ms: i64, to_ms: i64) -> String {
        join_path(&self.prefix, &format!("keys-{from_ms}-{to_ms}.csv"))
    }

    /// Sets the safety lag (default [`KEYS_SAFETY_LAG`]; tests shorten it).
    pub fn set_lag(&mut self, lag: Duration) {
        self.lag = lag;
    }

    /// Where the next range starts: the highest `to_ms` under the prefix, or 0.
    pub async fn exported_until(&self) -> Result<i64> {
        let objects =
            self.lister.list(&self.prefix).await.map_err(|e| {
                e.context("encryption_keys_data: listing the exported keys objects")
            })?;
        let head = format!("{}keys-", self.prefix);
        Ok(objects
            .iter()
            .filter_map(|o| {
                let rest = o.path.strip_prefix(&head)?.strip_suffix(".csv")?;
                let (from, to) = rest.split_once('-')?;
                let (from, to) = (from.parse::<i64>().ok()?, to.parse::<i64>().ok()?);
                (from >= 0 && to > from).then_some(to)
            })
            .max()
            .unwrap_or(0))
    }

    /// Exports the keys created in `[from_ms, to_ms)`, when there are any; returns how many.
    pub async fn export_range(&self, from_ms: i64, to_ms: i64) -> Result<usize> {
        let group = self.store.lookup_key().group_hash(&self.group);
        let keys = self
            .store
            .export_keys(&group, Some(from_ms))
            .await
            .map_err(|e| e.context("encryption_keys_data: reading the keys"))?;
        let mut writer = crate::keys_export::KeysWriter::new(self.format.as_ref())?;
        let mut bytes = Vec::new();
        writer.begin(&mut bytes)?;
        let mut n = 0;
        for k in keys.iter().filter(|k| k.created_at_ms < to_ms) {
            writer.write(&k.key, &k.policy_id, &mut bytes)?;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let path = self.object_name(from_ms, to_ms);
        write_object(&*self.sink, &path, Bytes::from(bytes), true)
            .await
            .map_err(|e| {
                e.context(format!(
                    "encryption_keys_data: writing {}",
                    self.sink.describe(&path)
                ))
            })?;
        Ok(n)
    }

    /// Runs until `stop` resolves, exporting every interval; then waits out the safety lag and
    /// exports up to the moment of the stop.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) -> Result<ExportStats> {
        tokio::pin!(stop);
        let lag_ms = i64::try_from(self.lag.as_millis()).unwrap_or(i64::MAX / 4);
        let mut from = self.exported_until().await?;
        let mut stats = ExportStats::default();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            from = self.step(from, now_ms() - lag_ms, &mut stats).await?;
        }
        let stopped_at = now_ms();
        tokio::time::sleep(self.lag).await;
        self.step(from, stopped_at.max(now_ms() - lag_ms), &mut stats)
            .await?;
        Ok(stats)
    }

    async fn step(&self, from: i64, to: i64, stats: &mut ExportStats) -> Result<i64> {
        if to <= from {
            return Ok(from);
        }
        let n = self.export_range(from, to).await?;
        if n == 0 {
            // nothing new: the same range is asked again next time, with a later end
            return Ok(from);
        }
        stats.objects += 1;
        stats.items += n as u64;
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("0-5-9"), Some((0, 5, 9)));
        assert_eq!(parse_range("12-0-0"), Some((12, 0, 0)));
        for bad in ["0-9-5", "x-1-2", "1-2", "1-2-3-4", "-1-2-3", ""] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
    }
}
