//! `keylink stream`: the stream-job file and the per-event privacy transform (SPEC §11).
//!
//! A [`StreamJob`] has the batch job's contract, consent, encryption and derived-data settings,
//! with streaming ends: a source (`{ "kafka": { … } }` or `{ "http": { … } }`) and topics as
//! targets. [`prepare`] turns it into the batch job it is equivalent to and compiles the same
//! [`PrivacyPlan`] a batch run compiles, so both paths share one privacy transform, one key
//! resolution ([`KeyResolver`]: get-or-create, durable before use) and one derived-data plan.
//! Events are decoded and encoded by the `jsonl` format — one event is one JSON Lines record —
//! so an event processed by a batch job and by a stream with the same key group gets the same
//! keyLink and byte-identical ciphertext.
//!
//! [`PreparedStream::transform`] processes a batch of events into one message per event and
//! output (message key = the keyLink); [`PreparedStream::deliver`] sends them and returns once
//! every output acknowledged; [`PreparedStream::run_source`] is the loop of a message source:
//! poll → transform → deliver → commit, so nothing is committed before every output has it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use crate::connector::BuildContext;
use crate::contract::{ContractRef, DataContract, find_contract, parse_document};
use crate::engine::OutputKind;
use crate::error::{Error, Result};
use crate::export::{
    BatchExporter, BatchExporterConfig, ExportSetup, ExportableTopic, JobPlaces, KeysExportConfig,
    KeysExporter,
};
use crate::format::{Format, FormatConfig};
use crate::job::{
    BatchJob, ConsentConfig, ConsentLevelType, DataConnectorAndType, DataConnectorRef, DerivedData,
    EncryptionConfig, MaskedFields, Target,
};
use crate::privacy::{DEFAULT_KEY_CACHE, KeyResolver, PlanOptions, PrivacyPlan};
use crate::record::RecordBatch;
use crate::reject::{RejectReason, Rejects};
use crate::stream::{
    InMessage, MessageSink, MessageSource, OutMessage, Subscription, last_per_partition,
};

/// Default `max_future_skew`: one hour.
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(3600);

/// Encoder sets kept between batches of events: batches are transformed concurrently (one per
/// gateway request or consumed chunk), and a set is built for each one running at once; this
/// many are kept for the next ones.
const STREAM_ENCODER_SETS: usize = 8;

/// A stream job (`stream.json`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamJob {
    /// Where events come from.
    pub source: StreamSource,
    /// The data contract (`event_contract_ref` is accepted as in batch jobs).
    #[serde(default)]
    pub data_contract_ref: Option<ContractRef>,
    /// The data contract, under its older name.
    #[serde(default)]
    pub event_contract_ref: Option<ContractRef>,
    /// Consent settings, as in batch jobs.
    #[serde(default)]
    pub consent: ConsentConfig,
    /// Encryption settings, as in batch jobs; `batch_job_group_id` is required.
    pub encryption: EncryptionConfig,
    /// The topic of encrypted events.
    #[serde(default)]
    pub encrypted_data: Option<TopicTarget>,
    /// Purpose-bound derived topics.
    #[serde(default)]
    pub derived_data: Vec<StreamDerived>,
    /// The topic raw rejected events go to (nowhere unless set).
    #[serde(default)]
    pub rejected_data: Option<TopicTarget>,
    /// The retention policy of the keys.
    #[serde(default)]
    pub policy_id: Option<String>,
    /// How far an event's time may be ahead of the clock: `"1h"`, `"15m"`, `"90s"` (default
    /// one hour). Later events are rejected (`future_timestamp`).
    #[serde(default)]
    pub max_future_skew: Option<String>,
    /// Periodic exports of the encrypted or a derived topic to an object store: one object per
    /// partition and interval, exactly once across restarts.
    #[serde(default)]
    pub batch_exporters: Vec<BatchExporterConfig>,
    /// Periodic exports of the keys the stream created, as keys CSV objects.
    #[serde(default)]
    pub encryption_keys_data: Option<KeysExportConfig>,
}

/// Where a stream's events come from.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamSource {
    /// The HTTP ingest gateway.
    Http(HttpSource),
    /// A topic of a message connector.
    Kafka(TopicSource),
}

/// `{ "http": { "listen": "127.0.0.1:8787" } }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    /// The address to listen on.
    pub listen: String,
    /// The largest request body accepted, in bytes (default 1 MiB); larger ones get 413.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// How long a request waits for every output's acknowledgement before it is answered 503
    /// (`"10s"`, the default; nothing counts as accepted then).
    #[serde(default)]
    pub ack_timeout: Option<String>,
}

/// `{ "kafka": { "data_connector_ref": { "name": "bus" }, "topic": T, "group_id": G } }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicSource {
    /// The connector.
    pub data_connector_ref: DataConnectorRef,
    /// The topic read.
    pub topic: String,
    /// The consumer group (where a restarted stream resumes).
    pub group_id: String,
}

/// `{ "target": { "data_connector_ref": { "name": "bus" }, "topic": T } }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicTarget {
    /// Where it goes.
    pub target: TopicRef,
}

/// A topic of a named connector.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicRef {
    /// The connector.
    pub data_connector_ref: DataConnectorRef,
    /// The topic.
    pub topic: String,
}

/// A derived topic, as a batch job's `derived_data` entry with a topic as its target.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamDerived {
    /// Where it goes.
    pub target: TopicRef,
    /// The purposes (consent levels) it is for.
    #[serde(default)]
    pub consent_levels: Vec<i32>,
    /// How record consent is compared with the purposes.
    #[serde(default)]
    pub consent_level_type: ConsentLevelType,
    /// Fields replaced by a keyed hash.
    #[serde(default)]
    pub masked_fields: Option<MaskedFields>,
}

impl StreamJob {
    /// Reads a stream-job file (JSON or YAML).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::from(e).context(format!("cannot read {}", path.display())))?;
        parse_document(&bytes, path)
    }
}

/// Parses `1h`, `15m`, `90s`, `2d` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// One output of a stream, resolved.
#[derive(Debug)]
pub struct StreamOutput {
    /// What it holds.
    pub kind: OutputKind,
    /// `encrypted`, `rejected`, `derived[0]`.
    pub name: String,
    /// The topic.
    pub topic: String,
    /// `kafka://…/topic`, for messages.
    pub described: String,
    /// The producer.
    pub sink: Arc<dyn MessageSink>,
}

/// Where the events of a prepared stream come from.
#[derive(Debug)]
pub enum PreparedSource {
    /// The HTTP gateway: the address and the body limit.
    Http {
        /// The address to listen on.
        listen: String,
        /// The largest body accepted.
        max_body_bytes: usize,
        /// How long a request waits for the outputs' acknowledgements.
        ack_timeout: Duration,
    },
    /// A message source, not yet opened (opening joins the consumer group).
    Topic {
        /// The connector's name.
        connector: String,
        /// Topic and group.
        subscription: Subscription,
    },
}

/// A stream job with everything resolved and checked.
#[derive(Debug)]
pub struct PreparedStream {
    /// The job file, for messages.
    pub job_file: String,
    /// The compiled privacy settings (the same a batch job compiles).
    pub plan: Arc<PrivacyPlan>,
    /// Keys: a cache in front of the key store.
    pub resolver: Arc<KeyResolver>,
    /// The event format (JSON Lines).
    pub format: Arc<dyn Format>,
    /// Every output, in the batch job's order: encrypted, rejected, derived.
    pub outputs: Vec<StreamOutput>,
    /// The source.
    pub source: PreparedSource,
    /// Events whose time is later than now + this are rejected.
    pub max_future_skew: Duration,
    /// Counters for logs and `/metrics`.
    pub stats: Arc<StreamStats>,
    ctx: BuildContext,
    /// The batch exporters (`batch_exporters`), in job order.
    pub exporters: Vec<BatchExporter>,
    /// The keys exporter (`encryption_keys_data`).
    pub keys_exporter: Option<KeysExporter>,
    /// Each output's encoder, built once and reused by every batch of events.
    encoders: crate::encoder_pool::EncoderPool,
}

/// Counters of a running stream. Labels are reasons and output names only, never values.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Events accepted (written to every output).
    pub accepted: AtomicU64,
    /// Rejected events by reason.
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Keys created.
    pub keys_created: AtomicU64,
    /// Batches delivered.
    pub batches: AtomicU64,
    /// Ack latency histogram (seconds): counts per bucket of [`LATENCY_BUCKETS`], then the sum
    /// in microseconds and the count.
    pub latency: Mutex<(Vec<u64>, u64, u64)>,
}

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

impl StreamStats {
    /// Records a batch's outcome.
    pub fn record(&self, accepted: usize, rejects: &[EventReject], latency: Duration) {
        self.accepted.fetch_add(accepted as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        if !rejects.is_empty() {
            let mut r = self.rejected.lock().expect("poisoned");
            for x in rejects {
                *r.entry(x.reason.as_str()).or_default() += 1;
            }
        }
        let mut h = self.latency.lock().expect("poisoned");
        if h.0.is_empty() {
            h.0 = vec![0; LATENCY_BUCKETS.len()];
        }
        let secs = latency.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += latency.as_micros() as u64;
        h.2 += 1;
    }

    /// The counters in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP keylink_events_accepted_total Events written to every output.\n\
             # TYPE keylink_events_accepted_total counter\n\
             keylink_events_accepted_total {}",
            self.accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP keylink_events_rejected_total Events rejected, by reason.\n\
             # TYPE keylink_events_rejected_total counter"
        );
        for (reason, n) in self.rejected.lock().expect("poisoned").iter() {
            let _ = writeln!(
                s,
                "keylink_events_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP keylink_keys_created_total Keys created in the key store.\n\
             # TYPE keylink_keys_created_total counter\n\
             keylink_keys_created_total {}",
            self.keys_created.load(Ordering::Relaxed)
        );
        let h = self.latency.lock().expect("poisoned");
        let _ = writeln!(
            s,
            "# HELP keylink_ack_latency_seconds Time from receiving a batch to every output's \
             acknowledgement.\n# TYPE keylink_ack_latency_seconds histogram"
        );
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let n = h.0.get(i).copied().unwrap_or(0);
            let _ = writeln!(s, "keylink_ack_latency_seconds_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "keylink_ack_latency_seconds_bucket{{le=\"+Inf\"}} {}\n\
             keylink_ack_latency_seconds_sum {}\nkeylink_ack_latency_seconds_count {}",
            h.2,
            h.1 as f64 / 1e6,
            h.2
        );
        s
    }

    /// Rejected events so far, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.lock().expect("poisoned").values().sum()
    }
}

/// A rejected event: its index in the batch, a reason and a detail naming fields, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventReject {
    /// The event's index in the batch given to [`PreparedStream::transform`].
    pub index: usize,
    /// Why.
    pub reason: RejectReason,
    /// What was expected (never a value).
    pub detail: String,
}

/// What [`PreparedStream::transform`] made of a batch of events.
#[derive(Debug, Default)]
pub struct Transformed {
    /// The messages of each output, in [`PreparedStream::outputs`] order; within an output, in
    /// event order.
    pub messages: Vec<Vec<OutMessage>>,
    /// Events accepted.
    pub accepted: usize,
    /// Events rejected, in event order.
    pub rejects: Vec<EventReject>,
}

/// Resolves and checks a stream job: every configuration error before any event is read.
pub async fn prepare(
    job: StreamJob,
    job_file: &Path,
    config: &crate::job::Config,
    contract_path: Option<&Path>,
) -> Result<PreparedStream> {
    let shown = job_file.display().to_string();
    let batch_exporters = job.batch_exporters;
    let keys_export = job.encryption_keys_data;
    let group = match job.encryption.batch_job_group_id.as_deref() {
        Some(g) if !g.is_empty() => g.to_string(),
        _ => {
            return Err(Error::config(format!(
                "{shown}: encryption.batch_job_group_id: missing; a stream needs a fixed key \
                 group, so that a replayed event gets the same key and byte-identical messages"
            )));
        }
    };
    let max_future_skew = match &job.max_future_skew {
        None => DEFAULT_MAX_FUTURE_SKEW,
        Some(s) => parse_duration(s).ok_or_else(|| {
            Error::config(format!(
                "{shown}: max_future_skew: {s:?} is not a duration; expected for example \"1h\", \
                 \"15m\" or \"90s\""
            ))
        })?,
    };
    let wanted = match (&job.data_contract_ref, &job.event_contract_ref) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::config(format!(
                "{shown}: event_contract_ref ({b}) and data_contract_ref ({a}) differ; give one"
            )));
        }
        (Some(a), _) | (None, Some(a)) => a.clone(),
        (None, None) => {
            return Err(Error::config(format!(
                "{shown}: data_contract_ref: missing; a stream names its data contract with \
                 data_contract_ref: {{\"handle\", \"name\", \"version\"}}"
            )));
        }
    };
    let (_contract_file, contract): (PathBuf, DataContract) = match contract_path {
        Some(p) => {
            let c = DataContract::from_file(p)?;
            if c.contract_ref != wanted {
                return Err(Error::config(format!(
                    "{}: the contract's ref is {}, but {shown} asks for {wanted}",
                    p.display(),
                    c.contract_ref
                )));
            }
            (p.to_path_buf(), c)
        }
        None => find_contract(&config.contracts_dir(), &wanted)
            .map_err(|e| e.context(format!("{shown}: data_contract_ref")))?,
    };
    let retention_days = config
        .retention_days(job.policy_id.as_deref())
        .map_err(|e| e.context(format!("{shown}: policy_id")))?;
    let jsonl: Box<dyn FormatConfig> = serde_json::from_str(r#"{"jsonl":{}}"#).map_err(|_| {
        Error::not_supported("streams need the jsonl format, which this build does not include")
    })?;
    let format = jsonl.build()?;

    // the batch job this stream is: same contract, consent, encryption, derived plans
    let (source, source_connector) = match job.source {
        StreamSource::Http(h) => {
            let ack_timeout = match &h.ack_timeout {
                None => Duration::from_secs(10),
                Some(s) => parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| {
                    Error::config(format!(
                        "{shown}: source.http.ack_timeout: {s:?} is not a duration; expected \
                         for example \"10s\""
                    ))
                })?,
            };
            (
                PreparedSource::Http {
                    listen: h.listen,
                    max_body_bytes: h.max_body_bytes.unwrap_or(1 << 20),
                    ack_timeout,
                },
                None,
            )
        }
        StreamSource::Kafka(t) => {
            if t.topic.is_empty() || t.group_id.is_empty() {
                return Err(Error::config(format!(
                    "{shown}: source.kafka: topic and group_id must not be empty"
                )));
            }
            let name = t.data_connector_ref.name.clone();
            (
                PreparedSource::Topic {
                    connector: name.clone(),
                    subscription: Subscription {
                        topic: t.topic,
                        group_id: t.group_id,
                    },
                },
                Some(t.data_connector_ref),
            )
        }
    };
    let as_target = |t: &TopicRef| DataConnectorAndType {
        data_connector_ref: DataConnectorRef {
            name: t.data_connector_ref.name.clone(),
            billing_id: None,
            project_id: None,
        },
        path_prefix: None,
        file_name: Some(t.topic.clone()),
        data_type: None,
        topic: None,
    };
    let mut targets: Vec<(OutputKind, String, TopicRef)> = Vec::new();
    let encrypted_data = job.encrypted_data.map(|t| {
        let out = Target {
            target: as_target(&t.target),
        };
        targets.push((
            OutputKind::Encrypted,
            "encrypted_data.target".into(),
            t.target,
        ));
        out
    });
    let rejected_data = job.rejected_data.map(|t| {
        let out = Target {
            target: as_target(&t.target),
        };
        targets.push((
            OutputKind::Rejected,
            "rejected_data.target".into(),
            t.target,
        ));
        out
    });
    let mut derived_data = Vec::new();
    for (i, d) in job.derived_data.into_iter().enumerate() {
        derived_data.push(DerivedData {
            target: as_target(&d.target),
            consent_levels: d.consent_levels,
            consent_level_type: d.consent_level_type,
            masked_fields: d.masked_fields,
        });
        targets.push((
            OutputKind::Derived(i),
            format!("derived_data[{i}].target"),
            d.target,
        ));
    }
    if encrypted_data.is_none() && derived_data.is_empty() {
        return Err(Error::config(format!(
            "{shown}: encrypted_data: missing; a stream needs an encrypted_data topic (or \
             derived_data)"
        )));
    }
    let batch_job = BatchJob {
        job_ref: None,
        states: None,
        source_data: DataConnectorAndType {
            data_connector_ref: source_connector.unwrap_or(DataConnectorRef {
                name: "http".into(),
                billing_id: None,
                project_id: None,
            }),
            path_prefix: None,
            file_name: None,
            data_type: Some(jsonl),
            topic: None,
        },
        consent: job.consent,
        encryption: job.encryption,
        event_contract_ref: None,
        data_contract_ref: Some(wanted),
        encrypted_data,
        encryption_keys_data: None,
        derived_data,
        policy_id: job.policy_id,
        rejected_data,
    };
    if batch_job.encryption.timestamp_config.field.is_empty() {
        return Err(Error::config(format!(
            "{shown}: encryption.timestamp_config.field: must name a field"
        )));
    }
    let named = crate::safety::named_fields(&batch_job, &contract, &shown);
    let universe = match &contract.schema_fields {
        Some(f) => f.clone(),
        None => {
            let mut names: Vec<String> = named.iter().map(|n| n.field.clone()).collect();
            names.sort();
            names.dedup();
            names
        }
    };
    let plan = PrivacyPlan::new(
        &batch_job,
        &contract,
        &PlanOptions {
            retention_days,
            universe,
        },
        &shown,
    )?;

    let ctx = BuildContext {
        base_dir: config.base_dir.clone(),
    };
    let connector =
        |name: &str, field: &str| {
            config.connectors.get(name).ok_or_else(|| {
            Error::config(format!(
                "{shown}: {field}.data_connector_ref.name: connector '{name}' is not defined in \
                 the config; defined: {}",
                config.connectors.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
        };
    // no two outputs on one topic, and no output on the input topic (compared by where the
    // topics really are, as for objects: SPEC §8)
    let mut places: Vec<(crate::connector::ObjectLocation, String)> = Vec::new();
    if let PreparedSource::Topic {
        connector: c,
        subscription,
    } = &source
    {
        let loc = connector(c, "source.kafka")?.location(&ctx, &subscription.topic)?;
        places.push((loc, "the source topic".into()));
    }
    for (_, field, t) in &targets {
        if t.topic.is_empty() {
            return Err(Error::config(format!(
                "{shown}: {field}.topic: must not be empty"
            )));
        }
        let loc = connector(&t.data_connector_ref.name, field)?.location(&ctx, &t.topic)?;
        if let Some((_, other)) = places.iter().find(|(l, _)| *l == loc) {
            return Err(Error::config(format!(
                "{shown}: {field}: topic {} is also {other}; every output needs a topic of its \
                 own",
                t.topic
            )));
        }
        places.push((loc, field.clone()));
    }

    let mut sinks: BTreeMap<String, Arc<dyn MessageSink>> = BTreeMap::new();
    let mut outputs = Vec::new();
    let mut output_connectors: BTreeMap<String, String> = BTreeMap::new();
    for (kind, field, t) in targets {
        let name = &t.data_connector_ref.name;
        output_connectors.insert(kind.name(), name.clone());
        let sink = match sinks.get(name) {
            Some(s) => s.clone(),
            None => {
                let s = connector(name, &field)?
                    .build_message_sink(&ctx)
                    .await
                    .map_err(|e| e.context(format!("{shown}: {field}: connector '{name}'")))?;
                sinks.insert(name.clone(), s.clone());
                s
            }
        };
        outputs.push(StreamOutput {
            kind,
            name: kind.name(),
            described: sink.describe(&t.topic),
            topic: t.topic,
            sink,
        });
    }
    let ks = config.key_store.as_ref().ok_or_else(|| {
        Error::config("no key store is configured: add `key_store: { type: …, … }` to the config")
    })?;
    let store = ks.build(&ctx).await.map_err(|e| e.context("key_store"))?;
    let exportable: Vec<ExportableTopic> = outputs
        .iter()
        .filter(|o| matches!(o.kind, OutputKind::Encrypted | OutputKind::Derived(_)))
        .map(|o| ExportableTopic {
            topic: o.topic.clone(),
            connector: output_connectors[&o.name].clone(),
            private: o.kind != OutputKind::Encrypted,
            role: o.name.clone(),
        })
        .collect();
    let mut job_places = JobPlaces::default();
    for (loc, role) in places {
        if role == "the source topic" {
            job_places.reads.push((loc, role));
        } else {
            job_places.writes.push((loc, role));
        }
    }
    let (exporters, keys_exporter) = crate::export::prepare_exporters(
        batch_exporters,
        keys_export,
        &ExportSetup {
            job_file: &shown,
            connectors: &config.connectors,
            ctx: &ctx,
            topics: &exportable,
            places: &job_places,
            store: store.clone(),
            group: &group,
        },
    )
    .await?;
    Ok(PreparedStream {
        exporters,
        keys_exporter,
        job_file: shown,
        plan: Arc::new(plan),
        resolver: Arc::new(KeyResolver::new(store, group, DEFAULT_KEY_CACHE)),
        format,
        outputs,
        source,
        max_future_skew,
        stats: Arc::new(StreamStats::default()),
        ctx,
        encoders: crate::encoder_pool::EncoderPool::new(STREAM_ENCODER_SETS),
    })
}

/// Copies one event into `buf` as one JSON Lines line: line breaks between JSON tokens become
/// spaces (JSON allows them there; JSON Lines does not). `Err` with a detail when the event
/// cannot be one line: it is empty, or has a raw line break inside a string (invalid JSON).
fn push_event_line(event: &[u8], buf: &mut Vec<u8>) -> std::result::Result<(), &'static str> {
    if event.iter().all(u8::is_ascii_whitespace) {
        return Err("empty event");
    }
    let start = buf.len();
    let (mut in_string, mut escaped) = (false, false);
    for &b in event {
        let out = match b {
            b'\n' | b'\r' if in_string => {
                buf.truncate(start);
                return Err("invalid JSON: a raw line break inside a string");
            }
            b'\n' | b'\r' => b' ',
            _ => b,
        };
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        }
        buf.push(out);
    }
    buf.push(b'\n');
    Ok(())
}

impl PreparedStream {
    /// Opens the message source of a `kafka` stream (joins its consumer group).
    pub async fn open_source(&self, config: &crate::job::Config) -> Result<Box<dyn MessageSource>> {
        let PreparedSource::Topic {
            connector,
            subscription,
        } = &self.source
        else {
            return Err(Error::config("this stream's source is not a topic"));
        };
        let cfg = config.connectors.get(connector).ok_or_else(|| {
            Error::config(format!(
                "connector '{connector}' is not defined in the config"
            ))
        })?;
        cfg.build_message_source(&self.ctx, subscription)
            .await
            .map_err(|e| {
                e.context(format!(
                    "{}: source: connector '{connector}'",
                    self.job_file
                ))
            })
    }

    /// Opens the consumers of the batch exporters (joins their groups), in exporter order.
    pub async fn open_exporter_sources(
        &self,
        config: &crate::job::Config,
    ) -> Result<Vec<Box<dyn MessageSource>>> {
        let mut out = Vec::new();
        for e in &self.exporters {
            let cfg = config.connectors.get(&e.connector).ok_or_else(|| {
                Error::config(format!(
                    "connector '{}' is not defined in the config",
                    e.connector
                ))
            })?;
            out.push(
                cfg.build_message_source(&self.ctx, &e.subscription)
                    .await
                    .map_err(|err| {
                        err.context(format!(
                            "{}: {}: reading topic {}",
                            self.job_file, e.name, e.subscription.topic
                        ))
                    })?,
            );
        }
        Ok(out)
    }

    /// Runs every exporter (`sources` from [`Self::open_exporter_sources`]) until `stop` says
    /// true (or its sender is gone), then lets each do its final export. Returns what each
    /// batch exporter and then the keys exporter wrote, or the first error (the others still
    /// finish). `failed` is called as soon as one exporter fails, so the caller can stop the
    /// stream (exports must not silently fall behind).
    pub async fn run_exporters(
        &self,
        sources: Vec<Box<dyn MessageSource>>,
        stop: tokio::sync::watch::Receiver<bool>,
        failed: &(dyn Fn() + Sync),
    ) -> Result<Vec<crate::export::ExportStats>> {
        let stop_fut = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        type Run<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<crate::export::ExportStats>> + Send + 'a>,
        >;
        let mut runs: Vec<Run<'_>> = Vec::new();
        for (e, mut src) in self.exporters.iter().zip(sources) {
            let stop = stop_fut(stop.clone());
            runs.push(Box::pin(async move {
                let r = e.run(src.as_mut(), stop).await;
                if r.is_err() {
                    failed();
                }
                r
            }));
        }
        if let Some(k) = &self.keys_exporter {
            let stop = stop_fut(stop.clone());
            runs.push(Box::pin(async move {
                let r = k.run(stop).await;
                if r.is_err() {
                    failed();
                }
                r
            }));
        }
        futures_join_all(runs.into_iter())
            .await
            .into_iter()
            .collect()
    }

    /// The privacy transform of a batch of events (each one JSON object): classify, resolve keys
    /// (new keys are durable in the key store before this returns), encrypt and derive — the
    /// same [`PrivacyPlan`] and [`KeyResolver`] steps a batch job runs — then one message per
    /// event and output, keyed by the event's keyLink. Rejected events are counted with their
    /// index and reason, and go (raw) to the rejected output only.
    pub async fn transform(&self, events: &[Bytes]) -> Result<Transformed> {
        let plan = &self.plan;
        let n_slots = plan.field_plan().len();
        let mut out = Transformed {
            messages: vec![Vec::new(); self.outputs.len()],
            ..Default::default()
        };
        // one event = one JSON Lines line; `lines[l]` is the event of line l + 1
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum());
        let mut lines: Vec<usize> = Vec::with_capacity(events.len());
        let mut rejected: Vec<EventReject> = Vec::new();
        // an event's own consent (`strmMeta.consentLevels`, SPEC §11): `own[i]` is the range of
        // event i's levels in `own_levels`
        let consent_field = plan.consent_field();
        let mut own: Vec<Option<(usize, usize)>> = Vec::new();
        let mut own_levels: Vec<i32> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let stripped;
            let line: &[u8] = match crate::event_meta::split_event_meta(e) {
                Ok(None) => e,
                Ok(Some(_)) if consent_field.is_some() => {
                    rejected.push(EventReject {
                        index: i,
                        reason: RejectReason::BadStrmMeta,
                        detail: format!(
                            "the event carries strmMeta.consentLevels, but this job reads \
                             consent from field '{}' (consent_level_extractor): ambiguous; \
                             send one or the other",
                            consent_field.unwrap_or_default()
                        ),
                    });
                    continue;
                }
                Ok(Some(m)) => {
                    if own.is_empty() {
                        own = vec![None; events.len()];
                    }
                    let start = own_levels.len();
                    own_levels.extend_from_slice(&m.consent_levels);
                    own[i] = Some((start, own_levels.len()));
                    stripped = m.stripped;
                    &stripped
                }
                Err(detail) => {
                    rejected.push(EventReject {
                        index: i,
                        reason: RejectReason::BadStrmMeta,
                        detail: detail.into(),
                    });
                    continue;
                }
            };
            match push_event_line(line, &mut buf) {
                Ok(()) => lines.push(i),
                Err(detail) => rejected.push(EventReject {
                    index: i,
                    reason: RejectReason::BadJson,
                    detail: detail.into(),
                }),
            }
        }
        let mut decoder = self.format.decoder(plan.field_plan());
        let mut batch = RecordBatch::new(n_slots);
        let mut rejects = Rejects::new(false);
        decoder.decode(&buf, &mut batch, &mut rejects)?;
        decoder.finish(&mut batch, &mut rejects)?;
        let layout = Arc::new(decoder.layout().unwrap_or_default());
        let mut classified = plan.classify(&batch, &mut rejects);
        // the event-time guard: a far-future event would open keys of future windows
        let limit = chrono::Utc::now().timestamp_millis()
            + i64::try_from(self.max_future_skew.as_millis()).unwrap_or(i64::MAX / 2);
        let skew = self.max_future_skew;
        classified.rows.retain(|row| {
            if row.timestamp_ms <= limit {
                return true;
            }
            rejects.push_counted(
                batch.record(row.record as usize).line(),
                RejectReason::FutureTimestamp,
                format!(
                    "the event time is more than {}s ahead of the clock (max_future_skew)",
                    skew.as_secs()
                ),
            );
            false
        });
        if !own.is_empty() {
            for k in 0..classified.rows.len() {
                let line = batch.record(classified.rows[k].record as usize).line();
                let event = lines
                    .get((line as usize).saturating_sub(1))
                    .copied()
                    .ok_or_else(|| Error::data("a record's line is outside the batch"))?;
                if let Some((a, b)) = own[event] {
                    classified.set_levels(k, &own_levels[a..b]);
                }
            }
        }
        for r in rejects.drain().0 {
            let index = lines
                .get((r.line as usize).saturating_sub(1))
                .copied()
                .ok_or_else(|| Error::data("a reject's line is outside the batch"))?;
            rejected.push(EventReject {
                index,
                reason: r.reason,
                detail: r.detail,
            });
        }
        rejected.sort_by_key(|r| r.index);
        let keys = self.resolver.resolve(plan, &batch, &mut classified).await?;
        self.stats
            .keys_created
            .fetch_add(keys.created, Ordering::Relaxed);
        out.accepted = classified.rows.len();

        let want_enc = self.outputs.iter().any(|o| o.kind == OutputKind::Encrypted);
        let (enc_rows, derived_rows) = plan.output_rows(&batch, &classified, &keys, want_enc)?;
        // a set is put back after a batch that encoded; one that failed drops its set (a cache)
        let mut encoders = self.encoders.take(&layout, self.outputs.len());
        for (i, (o, msgs)) in self.outputs.iter().zip(out.messages.iter_mut()).enumerate() {
            let rows = match o.kind {
                OutputKind::Encrypted => &enc_rows,
                OutputKind::Derived(i) => &derived_rows[i],
                OutputKind::Rejected => {
                    for r in &rejected {
                        msgs.push(OutMessage {
                            key: None,
                            payload: events[r.index].clone(),
                        });
                    }
                    continue;
                }
                OutputKind::Keys => continue,
            };
            if rows.is_empty() {
                continue;
            }
            let mut bytes = Vec::new();
            encoders
                .get(i, self.format.as_ref(), plan)?
                .encode(&batch, rows, &mut bytes)?;
            let bytes = Bytes::from(bytes);
            let mut start = 0;
            for i in 0..rows.len() {
                let end = memchr_newline(&bytes[start..])
                    .map(|p| start + p)
                    .ok_or_else(|| Error::data("the encoder wrote fewer lines than rows"))?;
                let (_, _, meta) = rows.row(i);
                msgs.push(OutMessage {
                    key: Some(Bytes::from(meta.key_link.hyphenated().to_string())),
                    payload: bytes.slice(start..end),
                });
                start = end + 1;
            }
        }
        self.encoders.put(encoders);
        // the messages are sent only once their keys are durable (SPEC §2)
        self.resolver.sync(keys.durable_after).await?;
        out.rejects = rejected;
        Ok(out)
    }

    /// Sends every output's messages of `t`, all outputs at once, and returns once every output
    /// acknowledged them all (or the first error).
    pub async fn deliver(&self, t: &Transformed) -> Result<()> {
        let sends = self
            .outputs
            .iter()
            .zip(&t.messages)
            .filter(|(_, m)| !m.is_empty())
            .map(|(o, m)| async move {
                o.sink.send(&o.topic, m).await.map_err(|e| {
                    e.context(format!("writing the {} output ({})", o.name, o.described))
                })
            });
        for r in futures_join_all(sends).await {
            r?;
        }
        Ok(())
    }

    /// Checks that every output can take messages (one round trip each).
    pub async fn check_outputs(&self) -> Result<()> {
        for o in &self.outputs {
            o.sink
                .check()
                .await
                .map_err(|e| e.context(format!("the {} output ({})", o.name, o.described)))?;
        }
        Ok(())
    }

    /// The loop of a message source: poll a batch, transform it, deliver it, and only then
    /// commit its positions; until `stop` resolves (the batch in hand is finished first).
    pub async fn run_source(
        &self,
        source: &mut dyn MessageSource,
        stop: impl std::future::Future<Output = ()>,
        batch_size: usize,
    ) -> Result<()> {
        tokio::pin!(stop);
        loop {
            let polled: Vec<InMessage> = tokio::select! {
                biased;
                _ = &mut stop => break,
                r = source.poll(batch_size, Duration::from_millis(200)) => r?,
            };
            if polled.is_empty() {
                continue;
            }
            let started = Instant::now();
            let events: Vec<Bytes> = polled.iter().map(|m| m.payload.clone()).collect();
            let t = self.transform(&events).await?;
            self.deliver(&t).await?;
            source
                .commit(&last_per_partition(polled.iter().map(|m| m.position)))
                .await?;
            self.stats.record(t.accepted, &t.rejects, started.elapsed());
            tracing::debug!(
                events = events.len(),
                accepted = t.accepted,
                rejected = t.rejects.len(),
                "batch delivered and committed"
            );
        }
        Ok(())
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

/// Runs futures concurrently (every one polled until all are ready) and returns their outputs
/// in order.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (f, d) in futs.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *d = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().map(|d| d.expect("all ready")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1 h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("1y"), None);
    }

    #[test]
    fn events_become_one_line_each() {
        let mut buf = Vec::new();
        push_event_line(b"{\n \"a\": \"x\\\"\\n\",\r\n\"b\":1}", &mut buf).unwrap();
        assert_eq!(buf, b"{  \"a\": \"x\\\"\\n\",  \"b\":1}\n");
        let mut buf = Vec::new();
        assert!(push_event_line(b"{\"a\":\"x\ny\"}", &mut buf).is_err());
        assert!(buf.is_empty());
        assert!(push_event_line(b" \n ", &mut buf).is_err());
    }
}
