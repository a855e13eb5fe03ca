//! The job runner: streaming, parallel, order-preserving, all-or-nothing.
//!
//! [`check`] resolves everything a job needs — contract, connectors, formats, privacy plan,
//! every output's location — and reports every configuration error before any data is read,
//! into a [`CheckedJob`] (what `keylink validate` shows; nothing that writes is built).
//! [`CheckedJob::build`] adds what a run needs — the key store and each output's
//! [`Destination`] — into a [`PreparedJob`] ([`prepare`] does both), so a job that can run
//! always has them. [`PreparedJob::run`] then processes each input object as a pipeline:
//!
//! ```text
//! read chunks ──► cut into batches    ──► per batch, on every core:      ──► write in order
//!  (async task)    between records         decode → classify → keys →        (async; outputs
//!                  (blocking thread)       encrypt → encode (tokio tasks)    stay invisible)
//! ```
//!
//! The blocking thread only scans for places between records (the format's
//! [`Splitter`](crate::format::Splitter)), so decoding runs on every core too; a format without
//! one is decoded on that thread (`run_pipeline`).
//!
//! Batches are handed to the writer as task handles through a bounded channel, so output order is
//! input order and memory stays bounded by `(parallelism + KEY_LOOKAHEAD + 2) × batch size`
//! whatever the input size (`run_pipeline`). Outputs are committed only after every input
//! succeeded; on any error every output is aborted and nothing is left at any target.
//!
//! A target with a `topic` (SPEC §11) is written as messages, one per JSON Lines record, all in
//! one transaction on its connector (`topic_output`); topic outputs commit after every
//! object output, so a failed object commit aborts the transaction and a failed transaction
//! commit removes the committed objects.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeroize::Zeroize;

use crate::buffer_pool::{Kept, Pooling};
use crate::connector::{
    BuildContext, ObjectMeta, ObjectWriter, Sink, Source, join_path, normalize_prefix,
    select_objects, validate_object_path,
};
use crate::contract::{DataContract, find_contract};
use crate::error::{Error, ErrorKind, Result};
use crate::format::{Format, Layout};
use crate::job::{BatchJob, Config, DataConnectorAndType};
use crate::keystore::KeyStore;
use crate::privacy::{BATCH_KEY_CACHE, KeyResolver, PlanOptions, PrivacyPlan};
use crate::record::{OutputRows, RecordBatch};
use crate::reject::{Reject, Rejects};
use crate::safety::FieldPresence;
use crate::shard::Shard;
use crate::summary::{InputSummary, JobSummary, OutputSummary};

/// Records per batch (a batch is also cut at [`BATCH_BYTES`]).
pub const BATCH_ROWS: usize = 8192;
/// Raw bytes per batch. With `parallelism` + [`KEY_LOOKAHEAD`] + 2 batches in flight
/// (`run_pipeline`), plus their outputs, this bounds the pipeline's memory (~0.5 MiB in,
/// ~0.75 MiB out per output per batch).
/// Measured at 1M rows (`cargo xtask bench`): 512 KiB instead of 1 MiB lowered peak RSS from
/// ~98 to ~88 MB for A and from ~113 to ~100 MB for B (four outputs), for 0–5 % more time.
pub const BATCH_BYTES: usize = 512 << 10;
/// Batches decoded ahead of the CPU stages, waiting for their keys. New keys are created in
/// one key-store transaction per [`KeyResolver`] group commit, so the more batches ask together,
/// the fewer transactions; each costs about 3 MB more peak RSS. Measured on the embedded store
/// (1M rows, 95k new keys, `--parallelism 2`): before its key log, every transaction rewrote
/// random index pages, and lookahead 0 / 4 / 8 / 16 made 204k / 141k / 106k / 77k page writes
/// (`pwrite64`). With the key log, lookahead 2 / 4 / 8 make 16.9k / 16.7k / 16.5k page writes
/// and 103 / 81 / 58 fsyncs at the same wall time, so 4 keeps most of the coalescing for ~12 MB
/// less than 8.
pub const KEY_LOOKAHEAD: usize = 4;
/// Largest piece of a chunk fed to a decoder at once.
const DECODE_PIECE: usize = 256 << 10;

/// Receives progress while a job runs (the CLI draws a progress bar with it).
pub trait Progress: Send + Sync {
    /// Input objects selected, with the total size when known.
    fn inputs(&self, count: usize, total_bytes: Option<u64>);
    /// An input object starts.
    fn start_object(&self, name: &str);
    /// Bytes and records processed since the last call.
    fn advance(&self, bytes: u64, rows: u64);
}

/// Options of a run.
#[derive(Clone)]
pub struct RunOptions {
    /// Batches processed at once (default: the number of cores).
    pub parallelism: usize,
    /// Progress receiver.
    pub progress: Option<Arc<dyn Progress>>,
    /// Keys kept in memory.
    pub key_cache: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: None,
            key_cache: BATCH_KEY_CACHE,
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("parallelism", &self.parallelism)
            .field("key_cache", &self.key_cache)
            .finish_non_exhaustive()
    }
}

/// What a job is checked for ([`check`], [`prepare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A run over the inputs there are now (`keylink run`, and `keylink validate`, which checks
    /// what a run would check).
    Run,
    /// `keylink run --watch`: like [`Mode::Run`], but the first input's header is not checked
    /// here (each object is checked when it is processed, and one bad object must not stop the
    /// watcher), and topic targets are refused.
    Watch,
}

/// What an output holds. Every output of a job is one of these, planned once in [`check`]
/// and then handled alike: opened, fed the bytes `process_batch` makes for it, committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The encrypted dataset.
    Encrypted,
    /// The keys export.
    Keys,
    /// The raw rejected records.
    Rejected,
    /// The `i`-th derived dataset.
    Derived(usize),
}

impl OutputKind {
    /// The output's name in summaries: `encrypted`, `keys`, `rejected`, `derived[0]`.
    pub fn name(self) -> String {
        match self {
            OutputKind::Encrypted => "encrypted".into(),
            OutputKind::Keys => "keys".into(),
            OutputKind::Rejected => "rejected".into(),
            OutputKind::Derived(i) => format!("derived[{i}]"),
        }
    }

    /// Whether it holds plaintext or keys (created private, SPEC §8): all but the encrypted
    /// dataset.
    pub fn is_private(self) -> bool {
        self != OutputKind::Encrypted
    }

    /// Whether it carries the records with `strmMeta` added (encrypted and derived data).
    pub fn adds_meta(self) -> bool {
        matches!(self, OutputKind::Encrypted | OutputKind::Derived(_))
    }
}

/// What an output holds and what encodes it: the data outputs carry the format their records
/// are written in (the target's `data_type`, else the input's), so a data output without a
/// format cannot be made. The keys export is a CSV table whatever the data's format (SPEC §2),
/// written by its format's table encoder ([`crate::keys_export`]); the rejected records are
/// written back in the input's format.
///
/// This is the one place a new kind of output is planned: `process_batch` makes its bytes
/// and `write_processed` its header by matching on it.
#[derive(Debug, Clone)]
pub enum OutputPlan {
    /// The encrypted dataset, in this format.
    Encrypted(Arc<dyn Format>),
    /// The keys export, written by this format's table encoder (csv).
    Keys(Arc<dyn Format>),
    /// The raw rejected records.
    Rejected,
    /// The `i`-th derived dataset, in this format.
    Derived(usize, Arc<dyn Format>),
}

impl OutputPlan {
    /// Its kind.
    pub fn kind(&self) -> OutputKind {
        match self {
            OutputPlan::Encrypted(_) => OutputKind::Encrypted,
            OutputPlan::Keys(_) => OutputKind::Keys,
            OutputPlan::Rejected => OutputKind::Rejected,
            OutputPlan::Derived(i, _) => OutputKind::Derived(*i),
        }
    }

    /// The format of a data output (encrypted or derived).
    pub fn data_format(&self) -> Option<&Arc<dyn Format>> {
        match self {
            OutputPlan::Encrypted(f) | OutputPlan::Derived(_, f) => Some(f),
            OutputPlan::Keys(_) | OutputPlan::Rejected => None,
        }
    }
}

/// An output target, checked: what it holds and where it goes. It names its connector; the
/// connector's sink or producer is built only by [`CheckedJob::build`] (a [`Destination`]).
#[derive(Debug)]
pub struct OutputTarget {
    /// What it holds.
    pub holds: OutputPlan,
    /// `encrypted`, `keys`, `rejected`, `derived[0]`.
    pub name: String,
    /// The connector's name.
    pub connector: String,
    /// The object path (the topic, for a topic target).
    pub path: String,
    /// Where the object really is (with `{input}` still in it when the path has it).
    pub location: crate::connector::ObjectLocation,
    /// The topic, for a target written as messages (then `path` is the topic too).
    pub topic: Option<String>,
}

impl OutputTarget {
    /// What it holds, as a kind.
    pub fn kind(&self) -> OutputKind {
        self.holds.kind()
    }
}

/// Where a prepared output's bytes go, built by [`CheckedJob::build`] for a run.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Objects on this sink, at the target's path (with `{input}` and a shard's part name
    /// applied), invisible until committed.
    Object(Arc<dyn Sink>),
    /// Messages on `topic`, in the one transaction of the job's topic outputs.
    Topic {
        /// The topic.
        topic: String,
        /// The connector's transactional producer.
        producer: Arc<dyn crate::stream::TransactionalSink>,
    },
}

/// What a target's `file_name` may hold to be replaced by each input object's name
/// ([`CheckedJob::input_name`]).
pub const INPUT: &str = "{input}";

/// A job with every name, location, field and format resolved and checked ([`check`]) — what
/// `keylink validate` and `keylink finalize` need. It has built its source (to list and peek at
/// inputs) but nothing that writes: no sink, no producer, no key store. [`CheckedJob::build`]
/// makes it a [`PreparedJob`], which can run.
#[derive(Debug)]
pub struct CheckedJob {
    /// The job file, for messages.
    pub job_file: String,
    /// The contract file used.
    pub contract_file: PathBuf,
    /// The compiled privacy settings.
    pub plan: Arc<PrivacyPlan>,
    /// The input connector.
    pub source: Arc<dyn Source>,
    /// The input connector's name.
    pub source_connector: String,
    /// The input prefix.
    pub source_prefix: String,
    /// The input glob.
    pub source_glob: Option<String>,
    /// The input format.
    pub input_format: Arc<dyn Format>,
    /// Every output, in the order they are committed: encrypted, keys, rejected, derived.
    pub outputs: Vec<OutputTarget>,
    /// The key group (the job's or a fresh one).
    pub key_group: String,
    /// The job's policy id (may be empty).
    pub policy_id: String,
    /// The fields the contract and job name: every input's header must have them (CSV), some
    /// record of every input must carry them (JSON Lines).
    pub named_fields: Vec<crate::safety::NamedField>,
    /// The masked-field globs, with the setting naming each.
    pub masked_globs: Vec<(String, String)>,
    /// Whether the targets hold `{input}`: one set of outputs per input object.
    pub per_input: bool,
    /// Whether the key group is the job's `batch_job_group_id` (not a fresh one per run).
    pub fixed_group: bool,
    /// Where the job selects its inputs, resolved.
    pub selection: crate::safety::Selection,
    /// The shard this run is (`keylink run --shard I/N`), set by [`CheckedJob::with_shard`].
    pub shard: Option<ShardPlan>,
}

/// A checked job with what a run needs built: the key store and every output's destination.
/// It derefs to its [`CheckedJob`].
#[derive(Debug)]
pub struct PreparedJob {
    job: CheckedJob,
    key_store: Arc<dyn KeyStore>,
    /// `destinations[i]` is where `job.outputs[i]` goes (made together by
    /// [`CheckedJob::build`]; private, so they stay in step).
    destinations: Vec<Destination>,
}

impl std::ops::Deref for PreparedJob {
    type Target = CheckedJob;

    fn deref(&self) -> &CheckedJob {
        &self.job
    }
}

impl PreparedJob {
    /// The key store the run uses.
    pub fn key_store(&self) -> &Arc<dyn KeyStore> {
        &self.key_store
    }

    /// Every output with its destination, in the job's output order.
    pub fn outputs(&self) -> impl Iterator<Item = (&OutputTarget, &Destination)> {
        self.job.outputs.iter().zip(&self.destinations)
    }

    /// [`CheckedJob::with_shard`], keeping what was built (a part's sink is its target's).
    pub fn with_shard(self, shard: Shard) -> Result<Self> {
        let PreparedJob {
            job,
            key_store,
            destinations,
        } = self;
        Ok(PreparedJob {
            job: job.with_shard(shard)?,
            key_store,
            destinations,
        })
    }
}

/// A sharded run's plan (SPEC §10, [`crate::shard`]).
#[derive(Debug, Clone)]
pub struct ShardPlan {
    /// Which shard.
    pub shard: Shard,
    /// The connector of the job's first output, where the marker and `_SUCCESS` go.
    pub connector: String,
    /// The marker this shard commits after its outputs.
    pub marker: String,
    /// The job's `_SUCCESS`, deleted before this shard writes anything.
    pub success: String,
}

/// [`check`]s a job, then [`CheckedJob::build`]s what a run needs.
pub async fn prepare(
    job: &BatchJob,
    job_file: &Path,
    config: &Config,
    contract_path: Option<&Path>,
    mode: Mode,
) -> Result<PreparedJob> {
    check(job, job_file, config, contract_path, mode)
        .await?
        .build(config)
        .await
}

/// Resolves and checks a job: every configuration error is reported here, before any data is
/// read, and nothing is written, created or opened but the input (listed, and its first object
/// peeked at for its header). `contract_path` overrides the lookup of the job's contract
/// reference.
pub async fn check(
    job: &BatchJob,
    job_file: &Path,
    config: &Config,
    contract_path: Option<&Path>,
    mode: Mode,
) -> Result<CheckedJob> {
    let shown = job_file.display().to_string();
    let wanted = job.contract_ref();
    let (contract_file, contract) = match contract_path {
        Some(p) => {
            let c = DataContract::from_file(p)?;
            if &c.contract_ref != wanted {
                return Err(Error::config(format!(
                    "{}: the contract's ref is {}, but {shown} asks for {wanted}",
                    p.display(),
                    c.contract_ref
                )));
            }
            (p.to_path_buf(), c)
        }
        None => find_contract(&config.contracts_dir(), wanted)
            .map_err(|e| e.context(format!("{shown}: event_contract_ref")))?,
    };
    let retention_days = config
        .retention_days(job.policy_id.as_deref())
        .map_err(|e| e.context(format!("{shown}: policy_id")))?;
    let ctx = BuildContext {
        base_dir: config.base_dir.clone(),
    };
    let src = &job.source_data;
    let source_cfg = connector_config(config, &src.data_connector_ref.name, &shown, "source_data")?;
    let input_format =
        build_format(src, &shown, "source_data")?.expect("checked by BatchJob::check");
    if let Some(glob) = &src.file_name {
        crate::connector::compile_glob(glob)
            .map_err(|e| e.context(format!("{shown}: source_data.file_name")))?;
    }
    let source = source_cfg
        .build_source(&ctx)
        .await
        .map_err(|e| e.context(format!("connector '{}'", src.data_connector_ref.name)))?;

    // the input's real layout, before data flows: a CSV header must have every field the contract
    // and the job name (SPEC §8)
    let named = crate::safety::named_fields(job, &contract, &shown);
    let selected = select_objects(
        source.as_ref(),
        src.path_prefix.as_deref().unwrap_or(""),
        src.file_name.as_deref(),
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "listing connector '{}'",
            src.data_connector_ref.name
        ))
    })?;
    let adds_meta = job.encrypted_data.is_some() || !job.derived_data.is_empty();
    // the first input with bytes in it (an empty object is skipped when the job runs)
    let first = selected
        .iter()
        .find(|o| o.size != Some(0))
        .or(selected.first());
    let first_header = match first {
        Some(first) => {
            let described = source.describe(&first.path);
            match peek_layout(source.as_ref(), &first.path, input_format.as_ref()).await {
                Ok(layout) => layout.columns.map(|c| (described, c)),
                // a watcher records a bad object as failed when it gets to it
                Err(_) if mode == Mode::Watch => None,
                Err(e) => return Err(e.context(described)),
            }
        }
        None => None,
    };
    let universe = field_universe(
        &contract,
        first_header.as_ref().map(|(_, c)| c.clone()),
        &named,
    );
    let plan = PrivacyPlan::new(
        job,
        &contract,
        &PlanOptions {
            retention_days,
            universe,
        },
        &shown,
    )?;
    let globs = masked_globs(job, &shown);
    // after the plan, so that errors of the settings themselves (a missing seed) come first
    if let Some((described, columns)) = &first_header
        && mode != Mode::Watch
    {
        crate::safety::check_header(described, columns, &named, &globs, adds_meta)?;
    }

    let target = |kind: OutputKind,
                  field: &str,
                  t: &DataConnectorAndType|
     -> Result<(OutputTarget, &dyn crate::connector::ConnectorConfig)> {
        let cname = &t.data_connector_ref.name;
        let cfg = connector_config(config, cname, &shown, field)?;
        if let Some(topic) = &t.topic {
            return topic_target(kind, field, t, topic, cfg, &ctx, &shown, &input_format)
                .map(|o| (o, cfg));
        }
        if cfg.build_transactional_sink(&ctx).is_ok() {
            return Err(Error::config(format!(
                "{shown}: {field}: connector '{cname}' has topics, not objects: name the topic \
                 with {field}.topic (instead of path_prefix and file_name)"
            )));
        }
        let path = join_path(
            t.path_prefix.as_deref().unwrap_or(""),
            t.file_name.as_deref().unwrap_or(""),
        );
        // `{input}` stands for an object name: check the path as it will be
        validate_object_path(&path.replace(INPUT, "input"))
            .map_err(|e| e.context(format!("{shown}: {field}.file_name")))?;
        let given = build_format(t, &shown, field)?;
        let holds = match kind {
            OutputKind::Keys => {
                let setting = match given {
                    Some(_) => format!("{shown}: {field}.data_type"),
                    None => format!("{shown}: {field}"),
                };
                OutputPlan::Keys(
                    crate::keys_export::keys_format(given).map_err(|e| e.context(setting))?,
                )
            }
            OutputKind::Rejected => {
                if let Some(f) = given
                    && f.name() != input_format.name()
                {
                    return Err(Error::config(format!(
                        "{shown}: {field}.data_type: rejected records are written as they were \
                         read, in the input's format ({}); found {}",
                        input_format.name(),
                        f.name()
                    )));
                }
                OutputPlan::Rejected
            }
            OutputKind::Encrypted | OutputKind::Derived(_) => {
                let format = given.unwrap_or_else(|| input_format.clone());
                if format.name() != input_format.name() {
                    return Err(Error::not_supported(format!(
                        "{shown}: {field}.data_type: converting {} input to {} output is not \
                         supported yet; use the input's format",
                        input_format.name(),
                        format.name()
                    )));
                }
                match kind {
                    OutputKind::Derived(i) => OutputPlan::Derived(i, format),
                    _ => OutputPlan::Encrypted(format),
                }
            }
        };
        Ok((
            OutputTarget {
                holds,
                name: kind.name(),
                connector: cname.clone(),
                path,
                location: crate::connector::ObjectLocation::new("", "", ""),
                topic: None,
            },
            cfg,
        ))
    };
    let mut outputs = Vec::new();
    if let Some(t) = &job.encrypted_data {
        outputs.push(target(
            OutputKind::Encrypted,
            "encrypted_data.target",
            &t.target,
        )?);
    }
    if let Some(t) = &job.encryption_keys_data {
        outputs.push(target(
            OutputKind::Keys,
            "encryption_keys_data.target",
            &t.target,
        )?);
    }
    if let Some(t) = &job.rejected_data {
        outputs.push(target(
            OutputKind::Rejected,
            "rejected_data.target",
            &t.target,
        )?);
    }
    for (i, d) in job.derived_data.iter().enumerate() {
        outputs.push(target(
            OutputKind::Derived(i),
            &format!("derived_data[{i}].target"),
            &d.target,
        )?);
    }
    // no output may be another output, an input, or where the input selection reads (SPEC §8);
    // compared by where the objects really are, not by connector name
    let locate = |cfg: &dyn crate::connector::ConnectorConfig, path: &str, what: &str| {
        cfg.location(&ctx, path)
            .map_err(|e| e.context(format!("{shown}: {what}")))
    };
    let mut places = Vec::new();
    for (t, cfg) in &mut outputs {
        t.location = locate(*cfg, &t.path, &t.name)?;
        places.push(crate::safety::Place {
            role: format!("{shown}: the {} output ({})", t.name, t.path),
            location: t.location.clone(),
        });
    }
    check_topic_targets(outputs.iter().map(|(t, _)| t), &shown, mode == Mode::Watch)?;
    // `{input}`: one set of outputs per input object, so every target needs it (or two inputs'
    // outputs would land on one object)
    let per_input = outputs.iter().any(|(t, _)| t.path.contains(INPUT));
    if per_input && let Some((t, _)) = outputs.iter().find(|(t, _)| !t.path.contains(INPUT)) {
        return Err(Error::config(format!(
            "{shown}: the {} output ({}) has no {INPUT} in its file_name, but another target \
             has: with {INPUT}, every input object gets outputs of its own, so every target \
             needs it",
            t.name, t.path
        )));
    }
    let reads = selected
        .iter()
        .map(|o| {
            Ok(crate::safety::Place {
                role: format!("the input {}", source.describe(&o.path)),
                location: locate(source_cfg, &o.path, "source_data")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // nor any file of the key store (a keys export over its database would destroy every key)
    let mut reads = reads;
    if let Some(ks) = &config.key_store {
        for (what, location) in ks
            .files(&ctx)
            .map_err(|e| e.context(format!("{shown}: key_store")))?
        {
            reads.push(crate::safety::Place {
                role: what,
                location,
            });
        }
    }
    let selection = crate::safety::Selection {
        prefix: locate(
            source_cfg,
            src.path_prefix.as_deref().unwrap_or("").trim_matches('/'),
            "source_data.path_prefix",
        )?,
        glob: match &src.file_name {
            Some(g) => Some(crate::connector::compile_glob(g)?),
            None => None,
        },
        role: format!("{shown}: source_data"),
    };
    crate::safety::check_locations(&places, &reads, Some(&selection))?;
    if per_input {
        for o in &selected {
            let name = input_name(&src.path_prefix.clone().unwrap_or_default(), &o.path)
                .map_err(|e| e.context(shown.clone()))?;
            let mut seen = std::collections::HashSet::new();
            for (t, _) in &outputs {
                let mut l = t.location.clone();
                l.key = l.key.replace(INPUT, &name);
                if !seen.insert(l.clone()) {
                    return Err(Error::config(format!(
                        "{shown}: for {}, two outputs are the same object ({l})",
                        source.describe(&o.path)
                    )));
                }
            }
        }
    }

    let outputs: Vec<OutputTarget> = outputs.into_iter().map(|(t, _)| t).collect();

    let key_group = match job.encryption.batch_job_group_id.as_deref() {
        Some(g) if !g.is_empty() => g.to_string(),
        _ => format!("run-{}", uuid::Uuid::new_v4()),
    };
    Ok(CheckedJob {
        job_file: shown,
        contract_file,
        plan: Arc::new(plan),
        source,
        source_connector: src.data_connector_ref.name.clone(),
        source_prefix: src.path_prefix.clone().unwrap_or_default(),
        source_glob: src.file_name.clone(),
        input_format,
        outputs,
        key_group,
        policy_id: job.policy_id.clone().unwrap_or_default(),
        named_fields: named,
        masked_globs: globs,
        per_input,
        selection,
        fixed_group: job
            .encryption
            .batch_job_group_id
            .as_deref()
            .is_some_and(|g| !g.is_empty()),
        shard: None,
    })
}

/// A target with a `topic`: its connector must take messages, and its records are JSON Lines.
#[allow(clippy::too_many_arguments)]
fn topic_target(
    kind: OutputKind,
    field: &str,
    t: &DataConnectorAndType,
    topic: &str,
    cfg: &dyn crate::connector::ConnectorConfig,
    ctx: &BuildContext,
    shown: &str,
    input_format: &Arc<dyn Format>,
) -> Result<OutputTarget> {
    let cname = &t.data_connector_ref.name;
    // built again by `CheckedJob::build`: here only to know the connector takes messages
    cfg.build_transactional_sink(ctx).map_err(|e| {
        e.context(format!(
            "{shown}: {field}.topic: connector '{cname}' cannot take a batch job's messages"
        ))
    })?;
    // a message is one JSON Lines record; the rejected copy is the input's own lines
    if let Some(f) = build_format(t, shown, field)?
        && f.name() != "jsonl"
    {
        return Err(Error::config(format!(
            "{shown}: {field}.data_type: a topic target carries one JSON Lines record per \
             message; {} is not supported there (use {{\"jsonl\": {{}}}} or leave it out)",
            f.name()
        )));
    }
    if input_format.name() != "jsonl" {
        return Err(Error::not_supported(format!(
            "{shown}: {field}.topic: a topic target carries one JSON Lines record per message, \
             but the input is {}; converting {} input to JSON Lines is not supported yet",
            input_format.name(),
            input_format.name()
        )));
    }
    Ok(OutputTarget {
        holds: match kind {
            OutputKind::Encrypted => OutputPlan::Encrypted(input_format.clone()),
            OutputKind::Derived(i) => OutputPlan::Derived(i, input_format.clone()),
            OutputKind::Rejected => OutputPlan::Rejected,
            OutputKind::Keys => {
                return Err(Error::config(format!(
                    "{shown}: {field}.topic: the keys export is always a CSV object"
                )));
            }
        },
        name: kind.name(),
        connector: cname.clone(),
        path: topic.to_string(),
        location: crate::connector::ObjectLocation::new("", "", ""),
        topic: Some(topic.to_string()),
    })
}

impl CheckedJob {
    /// Builds what a run of this job needs: every object target's sink (one per connector),
    /// every topic target's transactional producer, and the key store. `config` is the config
    /// the job was checked with. Nothing is created or written yet.
    pub async fn build(self, config: &Config) -> Result<PreparedJob> {
        let ctx = BuildContext {
            base_dir: config.base_dir.clone(),
        };
        let mut sinks: BTreeMap<String, Arc<dyn Sink>> = BTreeMap::new();
        let mut destinations = Vec::with_capacity(self.outputs.len());
        for t in &self.outputs {
            let cfg = connector_config(config, &t.connector, &self.job_file, &t.name)?;
            let destination = match &t.topic {
                Some(topic) => Destination::Topic {
                    topic: topic.clone(),
                    producer: cfg
                        .build_transactional_sink(&ctx)
                        .map_err(|e| e.context(format!("connector '{}'", t.connector)))?,
                },
                None => Destination::Object(match sinks.get(&t.connector) {
                    Some(s) => s.clone(),
                    None => {
                        let s = cfg
                            .build_sink(&ctx)
                            .await
                            .map_err(|e| e.context(format!("connector '{}'", t.connector)))?;
                        sinks.insert(t.connector.clone(), s.clone());
                        s
                    }
                }),
            };
            destinations.push(destination);
        }
        // No default here: core names no store. The CLI puts its default (the embedded store)
        // into the config when the file names none.
        let ks = config.key_store.as_ref().ok_or_else(|| {
            Error::config(
                "no key store is configured: add `key_store: { type: …, … }` to the config",
            )
        })?;
        let key_store = ks.build(&ctx).await.map_err(|e| e.context("key_store"))?;
        Ok(PreparedJob {
            job: self,
            key_store,
            destinations,
        })
    }
}

/// What topic targets cannot be combined with (yet): refused before any data is read.
fn check_topic_targets<'a>(
    outputs: impl Iterator<Item = &'a OutputTarget> + Clone,
    shown: &str,
    watch: bool,
) -> Result<()> {
    let Some(first) = outputs.clone().find(|t| t.topic.is_some()) else {
        return Ok(());
    };
    let topic_field = |t: &OutputTarget| format!("{shown}: the {} output's topic", t.name);
    // a topic named `x-{input}` too: one unit (and transaction) per input could not be all or
    // nothing
    if let Some(o) = outputs.clone().find(|t| t.path.contains(INPUT)) {
        return Err(Error::not_supported(format!(
            "{}: {INPUT} in the {} output's {} with topic targets is not supported: a job with \
             topic targets writes one transaction for all its inputs",
            topic_field(first),
            o.name,
            if o.topic.is_some() {
                "topic"
            } else {
                "file_name"
            }
        )));
    }
    if watch {
        return Err(Error::not_supported(format!(
            "{}: `keylink run --watch` with topic targets is not supported (it commits each \
             input object on its own, and needs {INPUT} in every target)",
            topic_field(first)
        )));
    }
    if let Some(o) = outputs
        .clone()
        .find(|t| t.topic.is_some() && t.connector != first.connector)
    {
        return Err(Error::not_supported(format!(
            "{}: the {} output writes to connector '{}', the {} output to '{}': topic targets \
             of one job must share one connector (one transaction, all or nothing)",
            topic_field(o),
            first.name,
            first.connector,
            o.name,
            o.connector
        )));
    }
    Ok(())
}

/// An input object's `{input}`: its path relative to the source prefix, without extension
/// (`2024/01/a.csv` → `2024/01/a`).
fn input_name(source_prefix: &str, path: &str) -> Result<String> {
    let rel = path
        .strip_prefix(normalize_prefix(source_prefix).as_str())
        .unwrap_or(path);
    let cut = match rel.rfind('.') {
        Some(dot) if dot > rel.rfind('/').map_or(0, |s| s + 1) => dot,
        _ => rel.len(),
    };
    let name = &rel[..cut];
    validate_object_path(name).map_err(|e| e.context(format!("{INPUT} of {path}")))?;
    Ok(name.to_string())
}

/// The field names masked-field patterns are matched against: the contract's schema; else the
/// header of the first input object (CSV); else the fields the contract and job name.
fn field_universe(
    contract: &DataContract,
    header: Option<Vec<String>>,
    named: &[crate::safety::NamedField],
) -> Vec<String> {
    if let Some(fields) = &contract.schema_fields {
        return fields.clone();
    }
    if let Some(columns) = header {
        return columns;
    }
    let mut names: Vec<String> = named.iter().map(|n| n.field.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// The glob patterns of the job's masked fields, with the setting naming each.
fn masked_globs(job: &BatchJob, shown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, d) in job.derived_data.iter().enumerate() {
        let Some(m) = &d.masked_fields else { continue };
        for (r, list) in &m.field_patterns {
            for (j, p) in list.field_patterns.iter().enumerate() {
                if crate::safety::is_glob(p) {
                    out.push((
                        p.clone(),
                        format!(
                            "{shown}: derived_data[{i}].masked_fields.field_patterns.{r}.\
                             field_patterns[{j}]"
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// Reads just enough of an object to know its layout (a CSV header).
pub(crate) async fn peek_layout(
    source: &dyn Source,
    path: &str,
    format: &dyn Format,
) -> Result<Layout> {
    let plan = crate::record::FieldPlan::new();
    let mut decoder = format.decoder(&plan);
    let mut batch = RecordBatch::new(0);
    let mut rejects = Rejects::new(false);
    let mut reader = source.open(path).await?;
    while let Some(chunk) = reader.read_chunk().await? {
        for piece in chunk.chunks(64 << 10) {
            decoder.decode(piece, &mut batch, &mut rejects)?;
            if let Some(layout) = decoder.layout() {
                return Ok(layout);
            }
            batch.clear();
            rejects.drain();
        }
    }
    decoder.finish(&mut batch, &mut rejects)?;
    Ok(decoder.layout().unwrap_or_default())
}

pub(crate) fn connector_config<'c>(
    config: &'c Config,
    name: &str,
    shown: &str,
    field: &str,
) -> Result<&'c dyn crate::connector::ConnectorConfig> {
    config.connectors.get(name).map(|c| c.as_ref()).ok_or_else(|| {
        let known: Vec<&str> = config.connectors.keys().map(String::as_str).collect();
        Error::config(format!(
            "{shown}: {field}.data_connector_ref.name: connector '{name}' is not defined in the \
             config ({}); defined: {}",
            config.base_dir.join("keylink.yaml").display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })
}

fn build_format(
    t: &DataConnectorAndType,
    shown: &str,
    field: &str,
) -> Result<Option<Arc<dyn Format>>> {
    match &t.data_type {
        None => Ok(None),
        Some(dt) => {
            dt.validate()
                .map_err(|e| e.context(format!("{shown}: {field}.data_type")))?;
            dt.build()
                .map(Some)
                .map_err(|e| e.context(format!("{shown}: {field}.data_type")))
        }
    }
}

/// One output being written.
struct OpenOutput {
    name: String,
    object: String,
    path: String,
    /// None for a topic output (its messages are taken back by aborting its transaction).
    sink: Option<Arc<dyn Sink>>,
    writer: Box<dyn ObjectWriter>,
    rows: u64,
    finished: bool,
}

impl OpenOutput {
    fn finish(&mut self) -> WriteFuture<'_> {
        Box::pin(async move {
            self.writer
                .finish()
                .await
                .map_err(|e| e.context(format!("writing {}", self.object)))?;
            self.finished = true;
            Ok(())
        })
    }
}

/// The open outputs of one unit, in the job's output order.
struct Outputs(Vec<OpenOutput>);

impl Outputs {
    /// Opens every output of `job`, with `{input}` replaced by `input` when given. On failure,
    /// the ones already open are aborted.
    async fn open(job: &PreparedJob, input: Option<&str>) -> Result<Self> {
        let mut outs = Outputs(Vec::new());
        // every topic output shares one transaction (one connector: checked in `check`)
        let mut tx: Option<Arc<crate::topic_output::SharedTransaction>> = None;
        for (t, destination) in job.outputs() {
            let opened = match destination {
                Destination::Topic { topic, producer } => {
                    let shared = match &tx {
                        Some(s) => Ok(s.clone()),
                        None => crate::topic_output::SharedTransaction::begin(producer.as_ref())
                            .await
                            .map_err(|e| e.context(format!("connector '{}'", t.connector))),
                    };
                    shared.map(|s| {
                        tx = Some(s.clone());
                        OpenOutput {
                            name: t.name.clone(),
                            object: producer.describe(topic),
                            path: topic.clone(),
                            sink: None,
                            writer: s.writer(topic, &t.name, t.kind().adds_meta()),
                            rows: 0,
                            finished: false,
                        }
                    })
                }
                Destination::Object(sink) => Self::open_one(t, sink, input).await,
            };
            match opened {
                Ok(o) => outs.0.push(o),
                Err(e) => {
                    outs.abort_all().await;
                    return Err(e);
                }
            }
        }
        Ok(outs)
    }

    async fn open_one(
        t: &OutputTarget,
        sink: &Arc<dyn Sink>,
        input: Option<&str>,
    ) -> Result<OpenOutput> {
        let path = match input {
            Some(name) => t.path.replace(INPUT, name),
            None => t.path.clone(),
        };
        // everything but the encrypted output holds plaintext or keys (SPEC §8)
        let mut writer = if t.kind().is_private() {
            sink.create_private(&path).await?
        } else {
            sink.create(&path).await?
        };
        if let OutputPlan::Keys(format) = &t.holds {
            let mut head = Vec::new();
            let begun = crate::keys_export::KeysWriter::new(format.as_ref())
                .and_then(|mut w| w.begin(&mut head));
            let written = match begun {
                Ok(()) => writer.write(Bytes::from(head)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
        Ok(OpenOutput {
            name: t.name.clone(),
            object: sink.describe(&path),
            path,
            sink: Some(sink.clone()),
            writer,
            rows: 0,
            finished: false,
        })
    }

    fn all(self) -> Vec<OpenOutput> {
        self.0
    }

    /// Writes out everything buffered ([`finish_list`]); the objects stay invisible.
    async fn finish_all(&mut self) -> Result<()> {
        finish_list(&mut self.0).await
    }

    async fn abort_all(self) {
        abort_list(self.0).await
    }
}

/// Finishes the outputs not finished yet: the objects together (each one's finish is mostly its
/// final flush to disk, and they overlap), then the topics in turn (they share one transaction).
async fn finish_list(outputs: &mut [OpenOutput]) -> Result<()> {
    let (objects, topics): (Vec<_>, Vec<_>) = outputs
        .iter_mut()
        .filter(|o| !o.finished)
        .partition(|o| o.sink.is_some());
    all_written(objects.into_iter().map(OpenOutput::finish).collect()).await?;
    for o in topics {
        o.finish().await?;
    }
    Ok(())
}

/// Aborts outputs; failures are logged (the job has already failed).
async fn abort_list(outputs: Vec<OpenOutput>) {
    for o in outputs {
        if let Err(e) = o.writer.abort().await {
            tracing::warn!(output = %o.name, object = %o.object, error = %e, "abort failed");
        }
    }
}

/// Finishes every output, then commits them, topic outputs last (their transaction commits with
/// the last of them); on failure deletes the committed objects and aborts the rest.
async fn commit_list(mut all: Vec<OpenOutput>) -> Result<Vec<OutputSummary>> {
    all.sort_by_key(|o| o.sink.is_none()); // stable: object outputs keep their order
    if let Err(e) = finish_list(&mut all).await {
        abort_list(all).await;
        return Err(e);
    }
    let mut committed: Vec<(Arc<dyn Sink>, String)> = Vec::new();
    let mut summaries = Vec::new();
    let mut iter = all.into_iter();
    while let Some(o) = iter.next() {
        let (sink, path) = (o.sink.clone(), o.path.clone());
        summaries.push(OutputSummary {
            name: o.name.clone(),
            object: o.object.clone(),
            rows: o.rows,
        });
        if let Err(e) = o.writer.commit().await {
            let e = e.context(format!("committing {}", o.object));
            for (s, p) in committed {
                if let Err(de) = s.delete(&p).await {
                    tracing::error!(object = %s.describe(&p), error = %de,
                        "could not remove an output after a later commit failed");
                }
            }
            abort_list(iter.collect()).await;
            return Err(e);
        }
        if let Some(sink) = sink {
            committed.push((sink, path));
        }
    }
    Ok(summaries)
}

/// What processing one batch produced.
struct Processed {
    /// The encoded bytes and row count for each output, in the job's output order.
    outputs: Vec<(Vec<u8>, u64)>,
    /// The batch's candidates for the keys export ([`crate::privacy::BatchKeys::first_use`])
    /// and where each one's row ends in the keys export's bytes (0 without a keys export, where
    /// the writer still claims them: that counts them): the writer keeps the rows of the keys
    /// the resolver lets it claim.
    key_rows: Vec<(uuid::Uuid, usize)>,
    rejects: Vec<Reject>,
    rows_read: u64,
    rows_accepted: u64,
    consent_defaulted: u64,
    bytes: u64,
    layout: Option<Arc<Layout>>,
    /// What must be durable before the outputs are written (SPEC §2).
    durable_after: crate::privacy::DurableAfter,
}

struct Shared {
    plan: Arc<PrivacyPlan>,
    resolver: Arc<KeyResolver>,
    /// Permits for the CPU stages of [`process_batch`] (classify; transform and encode): as
    /// many as `parallelism`. More batches than that are in flight ([`KEY_LOOKAHEAD`]), but
    /// only waiting for their keys; the semaphore is fair, so the oldest batch — the one the
    /// writer waits for — gets the cores first.
    cpu: Arc<tokio::sync::Semaphore>,
    /// Batches whose records were written, kept for the decoder to refill: their buffers have
    /// grown to a batch's size once, so decoding does not reallocate and copy them again
    /// (csv's "amortizing allocations"), and the allocator does not fragment.
    spare: crate::buffer_pool::Batches,
    /// What each output holds, in the job's output order.
    outputs: Vec<OutputPlan>,
    /// Each output's encoder, built once per layout and reused by every batch.
    encoders: crate::encoder_pool::EncoderPool,
    /// Each data output's buffers, back from the writer to be encoded into again.
    buffers: crate::buffer_pool::OutputBuffers,
    /// The output rows of batches encoded (encrypted, each derived output's), kept for the
    /// next batches' transforms: at most one set per CPU permit.
    rows: Kept<(OutputRows, Vec<OutputRows>)>,
    input_format: Arc<dyn Format>,
    /// The keys export's encoder (one for the whole output), when there is one: batches write
    /// their keys' rows with it in turn.
    keys: Option<std::sync::Mutex<crate::keys_export::KeysWriter>>,
    /// The job's `policy_id`, in every row of its keys export.
    policy_id: String,
}

impl Shared {
    fn has(&self, kind: OutputKind) -> bool {
        self.outputs.iter().any(|o| o.kind() == kind)
    }
}

impl CheckedJob {
    /// Lists the input objects the job selects (a sharded run: its slice of them).
    pub async fn inputs(&self) -> Result<Vec<ObjectMeta>> {
        let all = self.all_inputs().await?;
        Ok(match &self.shard {
            Some(plan) => plan.shard.slice(&all).to_vec(),
            None => all,
        })
    }

    /// Lists every input object the job selects, whatever the shard.
    pub async fn all_inputs(&self) -> Result<Vec<ObjectMeta>> {
        let objects = select_objects(
            self.source.as_ref(),
            &self.source_prefix,
            self.source_glob.as_deref(),
        )
        .await
        .map_err(|e| e.context(format!("listing connector '{}'", self.source_connector)))?;
        if objects.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no input objects: connector '{}' has nothing under prefix {:?} matching {:?}",
                    self.source_connector,
                    self.source_prefix,
                    self.source_glob.as_deref().unwrap_or("*")
                ),
            ));
        }
        Ok(objects)
    }

    /// Whether targets name `{input}`: one set of outputs per input object.
    pub fn per_input(&self) -> bool {
        self.per_input
    }

    fn empty_summary(&self) -> JobSummary {
        JobSummary {
            contract: self.plan.contract_ref().to_string(),
            key_group: self.key_group.clone(),
            ..Default::default()
        }
    }

    /// An input object's `{input}`: its path relative to the source prefix, without extension
    /// (`2024/01/a.csv` → `2024/01/a`).
    pub fn input_name(&self, path: &str) -> Result<String> {
        input_name(&self.source_prefix, path)
    }

    /// The outputs of one input object may not collide with each other, with the object, or
    /// with where the job selects inputs (SPEC §8; the templates were checked in `check`).
    fn check_unit_locations(&self, object: &ObjectMeta, name: &str) -> Result<()> {
        let places: Vec<crate::safety::Place> = self
            .outputs
            .iter()
            .map(|t| crate::safety::Place {
                role: format!(
                    "{}: the {} output ({})",
                    self.job_file,
                    t.name,
                    t.path.replace(INPUT, name)
                ),
                location: {
                    let mut l = t.location.clone();
                    l.key = l.key.replace(INPUT, name);
                    l
                },
            })
            .collect();
        let rel = object
            .path
            .strip_prefix(normalize_prefix(&self.source_prefix).as_str())
            .unwrap_or(&object.path);
        let reads = [crate::safety::Place {
            role: format!("the input {}", self.source.describe(&object.path)),
            location: self.selection.prefix.child(rel),
        }];
        crate::safety::check_locations(&places, &reads, Some(&self.selection))
    }

    /// Whether an output carries records with `strmMeta` (encrypted or derived data).
    fn adds_meta(&self) -> bool {
        self.outputs.iter().any(|t| t.kind().adds_meta())
    }
}

impl PreparedJob {
    /// Runs the job. Outputs appear only if it succeeds.
    pub async fn run(self, opts: RunOptions) -> Result<JobSummary> {
        let started = Instant::now();
        let inputs = self.inputs().await?;
        if let Some(plan) = &self.shard {
            // the manifest must never describe parts replaced after it was written
            self.delete_success(plan).await?;
        }
        tracing::info!(
            job = %self.job_file,
            contract = %self.plan.contract_ref(),
            inputs = inputs.len(),
            key_group = %self.key_group,
            parallelism = opts.parallelism,
            "job started"
        );
        if let Some(p) = &opts.progress {
            let total = inputs.iter().map(|o| o.size).sum::<Option<u64>>();
            p.inputs(inputs.len(), total);
        }
        // with `{input}` in the targets, every input object is a unit with outputs of its own;
        // all units commit together at the end, so the job stays all-or-nothing
        let units: Vec<&[ObjectMeta]> = if self.per_input {
            inputs.chunks(1).collect()
        } else {
            vec![&inputs[..]]
        };
        let mut total = self.empty_summary();
        let mut pending: Vec<OpenOutput> = Vec::new();
        let n_units = units.len();
        for (i, unit) in units.into_iter().enumerate() {
            match self.process_unit(unit, &opts, i + 1 == n_units).await {
                Ok((outputs, summary)) => {
                    total.merge(summary);
                    pending.extend(outputs.all());
                }
                Err(e) => {
                    tracing::info!("job failed; aborting every output");
                    abort_list(pending).await;
                    return Err(e);
                }
            }
        }
        total.outputs = commit_list(pending).await?;
        for o in &total.outputs {
            tracing::info!(output = %o.name, object = %o.object, rows = o.rows, "committed");
        }
        total.finish(started.elapsed());
        if let Some(plan) = &self.shard {
            // last: a shard without its marker has not committed, whatever parts it left
            total.shard = Some(plan.shard.to_string());
            self.write_marker(plan, &inputs, &total).await?;
        }
        Ok(total)
    }

    /// Processes one input object as its own all-or-nothing unit and commits its outputs (each
    /// target's `{input}` replaced by the object's name): what `keylink run --watch` does for
    /// every new object. The job must have been prepared with `{input}` in every target.
    pub async fn run_object(&self, object: &ObjectMeta, opts: &RunOptions) -> Result<JobSummary> {
        let started = Instant::now();
        if !self.per_input {
            return Err(Error::config(format!(
                "{}: every target's file_name needs {{input}} to process objects one by one",
                self.job_file
            )));
        }
        let (outputs, mut summary) = self
            .process_unit(std::slice::from_ref(object), opts, false)
            .await?;
        summary.outputs = commit_list(outputs.all()).await?;
        summary.finish(started.elapsed());
        Ok(summary)
    }

    /// Reads `objects` into one set of outputs, finished but not committed; on error every
    /// output of the unit is aborted. With `settle` (the job's last unit), the key store
    /// [settles](KeyStore::settle) once no more keys are asked for.
    async fn process_unit(
        &self,
        objects: &[ObjectMeta],
        opts: &RunOptions,
        settle: bool,
    ) -> Result<(Outputs, JobSummary)> {
        let key_store = self.key_store.clone();
        let input_name = match (self.per_input, objects) {
            (true, [one]) => Some(self.input_name(&one.path)?),
            (true, _) => {
                return Err(Error::new(
                    ErrorKind::Other,
                    "a per-input unit must hold exactly one object",
                ));
            }
            (false, _) => None,
        };
        // a resolver per unit: each unit's keys export holds every key its outputs use
        let mut resolver = KeyResolver::new(key_store, self.key_group.clone(), opts.key_cache)
            .with_policy(&self.policy_id);
        if !self.fixed_group && !self.per_input {
            // the group was made up for this run and this is its only unit
            resolver = resolver.exclusive_group();
        }
        let resolver = Arc::new(resolver);
        let shared = Arc::new(Shared {
            plan: self.plan.clone(),
            resolver: resolver.clone(),
            cpu: Arc::new(tokio::sync::Semaphore::new(opts.parallelism.max(1))),
            // fewer than can be in flight: keeping as many (8 at `--parallelism 2`) was measured
            // no faster, for ~3 MB more peak RSS
            spare: crate::buffer_pool::Batches::new(KEY_LOOKAHEAD, self.plan.field_plan().len()),
            encoders: crate::encoder_pool::EncoderPool::new(opts.parallelism),
            // one buffer for each batch that can be in flight and one being written; the
            // rejected output takes the decoder's buffer
            buffers: crate::buffer_pool::OutputBuffers::new(
                self.outputs.iter().map(|t| match t.holds {
                    OutputPlan::Encrypted(_) | OutputPlan::Derived(..) => Pooling::Kept,
                    // keys in clear
                    OutputPlan::Keys(_) => Pooling::Zeroized,
                    OutputPlan::Rejected => Pooling::No,
                }),
                opts.parallelism.max(1) + KEY_LOOKAHEAD + 1,
            ),
            rows: Kept::new(opts.parallelism.max(1)),
            outputs: self.outputs.iter().map(|t| t.holds.clone()).collect(),
            input_format: self.input_format.clone(),
            keys: self
                .outputs
                .iter()
                .find_map(|t| match &t.holds {
                    OutputPlan::Keys(f) => Some(f),
                    _ => None,
                })
                .map(|f| crate::keys_export::KeysWriter::new(f.as_ref()))
                .transpose()?
                .map(std::sync::Mutex::new),
            policy_id: self.policy_id.clone(),
        });
        if let Some(name) = &input_name {
            self.check_unit_locations(&objects[0], name)?;
        }
        let mut outputs = Outputs::open(self, input_name.as_deref()).await?;
        let mut summary = self.empty_summary();
        let mut first_layout: Option<(Arc<Layout>, String)> = None;
        let mut result = Ok(());
        for object in objects {
            let r = self
                .process_object(
                    object,
                    &shared,
                    &mut outputs,
                    &mut first_layout,
                    &mut summary,
                    opts,
                )
                .await;
            if let Err(e) = r {
                result = Err(e.context(format!(
                    "while processing {}",
                    self.source.describe(&object.path)
                )));
                break;
            }
        }
        if result.is_ok() {
            result = if settle {
                // Every key is made and durable: the store tidies up (SQLite: a checkpoint)
                // beside the outputs' final flushes, not after them. Measured at 1M rows (perf):
                // each took ~35 ms at the end of the job, one after the other, the second core
                // idle.
                let store = self.key_store();
                let (finished, settled) = tokio::join!(outputs.finish_all(), store.settle());
                if let Err(e) = settled {
                    tracing::warn!(store = %store.describe(), error = %e,
                        "the key store could not settle");
                }
                finished
            } else {
                outputs.finish_all().await
            };
        }
        if let Err(e) = result {
            outputs.abort_all().await;
            return Err(e);
        }
        summary.keys_created = resolver.created();
        summary.keys_reused = resolver.used().saturating_sub(resolver.created());
        summary.records_after_forget = resolver.records_after_forget();
        if summary.keys_created > 0 {
            let entry = crate::keystore::AuditEntry {
                at_ms: crate::keystore::now_ms(),
                operation: crate::keystore::AuditOperation::Created,
                keys: summary.keys_created,
                subject: None,
                group: Some(self.key_group.clone()),
                detail: format!("by a run of {}", summary.contract),
            };
            crate::keystore::audit_best_effort(resolver.store().as_ref(), &entry).await;
        }
        Ok((outputs, summary))
    }

    async fn process_object(
        &self,
        object: &ObjectMeta,
        shared: &Arc<Shared>,
        outputs: &mut Outputs,
        first_layout: &mut Option<(Arc<Layout>, String)>,
        summary: &mut JobSummary,
        opts: &RunOptions,
    ) -> Result<()> {
        let described = self.source.describe(&object.path);
        tracing::info!(object = %described, bytes = ?object.size, "reading input");
        if let Some(p) = &opts.progress {
            p.start_object(&described);
        }
        let mut input = InputSummary {
            object: described.clone(),
            ..Default::default()
        };
        let reader = self.source.open(&object.path).await?;
        let sh = shared.clone();
        let work_sh = shared.clone();
        let presence = run_pipeline(
            Pipeline {
                reader,
                format: self.input_format.clone(),
                fields: self.plan.field_plan(),
                keep_raw: shared.has(OutputKind::Rejected),
                in_flight: opts.parallelism.max(1) + KEY_LOOKAHEAD,
                described: described.clone(),
            },
            move || sh.spare.take(),
            move |input, layout, bytes| process_batch(work_sh.clone(), input, layout, bytes),
            async |processed| {
                self.write_processed(
                    processed,
                    &shared.resolver,
                    &shared.buffers,
                    outputs,
                    first_layout,
                    &mut input,
                    summary,
                    opts,
                )
                .await
            },
        )
        .await?;
        if let Some(presence) = presence {
            let fields = self.plan.field_plan();
            for n in &self.named_fields {
                if fields.index_of(&n.field).is_some_and(|i| !presence.seen(i))
                    && !input.fields_never_seen.contains(&n.field)
                {
                    tracing::warn!(object = %input.object, field = %n.field, named_by = %n.setting,
                        "no record of this input carries a field the job names");
                    input.fields_never_seen.push(n.field.clone());
                }
            }
        }
        summary.inputs.push(input);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_processed(
        &self,
        p: Processed,
        resolver: &KeyResolver,
        buffers: &crate::buffer_pool::OutputBuffers,
        outputs: &mut Outputs,
        first_layout: &mut Option<(Arc<Layout>, String)>,
        input: &mut InputSummary,
        summary: &mut JobSummary,
        opts: &RunOptions,
    ) -> Result<()> {
        if let Some(layout) = &p.layout {
            match first_layout {
                None => {
                    // checked in `check` on the first object; again here, on what is really read
                    if let Some(columns) = &layout.columns {
                        crate::safety::check_header(
                            &input.object,
                            columns,
                            &self.named_fields,
                            &self.masked_globs,
                            self.adds_meta(),
                        )?;
                    }
                    *first_layout = Some((layout.clone(), input.object.clone()));
                    // each data output starts with its format's header (CSV); the rejected
                    // copy with the input's own header; the keys export has its own
                    for (o, t) in outputs.0.iter_mut().zip(&self.outputs) {
                        let (format, unchanged) = match &t.holds {
                            OutputPlan::Keys(_) => continue,
                            OutputPlan::Rejected => (&self.input_format, true),
                            OutputPlan::Encrypted(f) | OutputPlan::Derived(_, f) => (f, false),
                        };
                        let mut enc = format.encoder(
                            self.plan.field_plan(),
                            layout,
                            self.plan.contract_ref(),
                        )?;
                        let mut head = Vec::new();
                        if unchanged {
                            enc.begin_unchanged(&mut head)?;
                        } else {
                            enc.begin(&mut head)?;
                        }
                        if !head.is_empty() {
                            o.writer.write(Bytes::from(head)).await?;
                        }
                    }
                }
                Some((first, first_object)) if **first != **layout => {
                    return Err(Error::data(format!(
                        "its columns differ from those of {first_object}; all inputs of one job \
                         must have the same header"
                    )));
                }
                Some(_) => {}
            }
        }
        // The batch's keys are durable before anything encrypted with them is written (SPEC §2).
        // The store committed them without waiting for the disk; `process_batch` synced them
        // beside the transform, so this finds them durable (it is the check that guards the
        // write, and it syncs if they are not).
        resolver.sync(p.durable_after).await?;
        // claimed here, in the batches' order, so the keys export's order is the input's
        let claimed: Vec<bool> = p
            .key_rows
            .iter()
            .map(|&(k, _)| resolver.claim_export(k))
            .collect();
        // each output's write at once: they go to different objects, and a local file's write
        // waits on a blocking thread (the writer is on the job's ordered path)
        let mut writes: Vec<WriteFuture<'_>> = Vec::with_capacity(outputs.0.len());
        for (i, ((o, t), (mut bytes, mut rows))) in outputs
            .0
            .iter_mut()
            .zip(&self.outputs)
            .zip(p.outputs)
            .enumerate()
        {
            if let OutputPlan::Keys(_) = t.holds {
                rows = keep_claimed_rows(&mut bytes, &p.key_rows, &claimed);
            }
            o.rows += rows;
            if !bytes.is_empty() {
                writes.push(o.writer.write(buffers.bytes(i, bytes)));
            }
        }
        all_written(writes).await?;
        input.rows_read += p.rows_read;
        input.rows_accepted += p.rows_accepted;
        input.add_rejects(&p.rejects);
        summary.consent_defaulted += p.consent_defaulted;
        summary.bytes_read += p.bytes;
        if let Some(pr) = &opts.progress {
            pr.advance(p.bytes, p.rows_read);
        }
        Ok(())
    }
}

/// One output's [`ObjectWriter::write`] of a batch, or its finish ([`OpenOutput::finish`]).
type WriteFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// Runs `writes` together until all have finished; the first error, if any.
async fn all_written(mut writes: Vec<WriteFuture<'_>>) -> Result<()> {
    use std::task::Poll;
    let mut first_error = None;
    std::future::poll_fn(|cx| {
        writes.retain_mut(|w| match w.as_mut().poll(cx) {
            Poll::Ready(r) => {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
                false
            }
            Poll::Pending => true,
        });
        if writes.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    first_error.map_or(Ok(()), Err)
}

/// What [`run_pipeline`] reads and how.
pub(crate) struct Pipeline<'a> {
    /// The object being read.
    pub reader: Box<dyn crate::connector::ObjectReader>,
    /// Its format.
    pub format: Arc<dyn Format>,
    /// The fields the decoder fills.
    pub fields: &'a crate::record::FieldPlan,
    /// Whether rejected records keep their raw bytes (a rejected output exists).
    pub keep_raw: bool,
    /// Batches queued for the writer, at most ([`run_pipeline`] says what else is in flight).
    pub in_flight: usize,
    /// The object, for messages.
    pub described: String,
}

/// Where [`run_pipeline`] gets an empty batch (the engine recycles them).
type NewBatch = Arc<dyn Fn() -> RecordBatch + Send + Sync>;

/// A batch's input, as [`run_pipeline`] hands it to `work`: records its thread decoded, or a
/// piece of the object, cut between records, that `work` decodes on the core it takes for the
/// batch ([`BatchInput::decode`]).
pub(crate) struct BatchInput(Input);

enum Input {
    Decoded {
        batch: RecordBatch,
        rejects: Rejects,
    },
    Piece {
        bytes: Bytes,
        decoder: Box<dyn crate::format::Decoder>,
        /// Called when the piece is decoded, so that a piece waiting for a core holds only its
        /// bytes (a recycled batch has the capacity of a full one).
        new_batch: NewBatch,
        keep_raw: bool,
        /// Where a format without a header records which fields the piece's records carry.
        presence: Option<Arc<std::sync::Mutex<FieldPresence>>>,
    },
}

impl BatchInput {
    /// Whether `work` decodes this batch itself.
    #[cfg(test)]
    fn is_piece(&self) -> bool {
        matches!(self.0, Input::Piece { .. })
    }

    /// The batch's records and rejects, decoding them first if the batch is a piece.
    pub(crate) fn decode(self) -> Result<(RecordBatch, Rejects)> {
        match self.0 {
            Input::Decoded { batch, rejects } => Ok((batch, rejects)),
            Input::Piece {
                bytes,
                mut decoder,
                new_batch,
                keep_raw,
                presence,
            } => {
                let mut batch = new_batch();
                let mut rejects = Rejects::new(keep_raw);
                // the records' bytes are about the piece's: grow the buffer once, not by doubling
                batch.raw_mut().reserve(bytes.len());
                decoder.decode(&bytes, &mut batch, &mut rejects)?;
                decoder.finish(&mut batch, &mut rejects)?;
                if let Some(p) = presence {
                    p.lock().unwrap_or_else(|p| p.into_inner()).observe(&batch);
                }
                Ok((batch, rejects))
            }
        }
    }
}

/// How much of the object a [`Splitter`](crate::format::Splitter) scans at a time.
const SCAN_STEP: usize = 64 << 10;
/// The longest stretch of an object without a cut that is still decoded in pieces: a longer
/// record (or a quote never closed) makes the rest of the object decode on the pipeline's
/// thread, as a format without a splitter does, so memory stays bounded by the decoder's own
/// limits.
const MAX_PIECE: usize = 8 << 20;

/// The pipeline's thread while it cuts an object into pieces ([`run_pipeline`]).
struct Pieces {
    splitter: Box<dyn crate::format::Splitter>,
    /// Bytes after the last piece, from earlier chunks.
    carry: Vec<u8>,
    /// Where the bytes after the last piece start in the current chunk (after `carry`).
    start: usize,
    /// The line the next piece starts on.
    line: u64,
    /// The last cut scanned and not used: (offset in the current chunk, line).
    cut: Option<(usize, u64)>,
}

/// How [`Cutter`] starts a batch's task: with its input, the layout and the bytes of input it
/// holds. `false` when the pipeline has stopped.
type SendBatch<'a> = dyn FnMut(BatchInput, &Option<Arc<Layout>>, u64) -> bool + 'a;

/// The pipeline's thread on one object ([`run_pipeline`]): it decodes the object's start, and
/// from the first cut where its decoder can fork, only cuts pieces.
struct Cutter {
    /// Decodes on this thread; while cutting, the decoder that pieces' decoders are forked from
    /// (it stays where it forked first).
    decoder: Box<dyn crate::format::Decoder>,
    /// The format's splitter, while this thread decodes.
    splitter: Option<Box<dyn crate::format::Splitter>>,
    /// Set while this thread cuts.
    pieces: Option<Pieces>,
    /// What this thread decoded and has not sent, and the bytes of input it came from.
    batch: RecordBatch,
    rejects: Rejects,
    bytes: u64,
    layout: Option<Arc<Layout>>,
    /// Which fields the records carried (formats without a header): those this thread decoded,
    /// and those of the pieces.
    presence: FieldPresence,
    piece_presence: Arc<std::sync::Mutex<FieldPresence>>,
    new_batch: NewBatch,
    keep_raw: bool,
}

impl Cutter {
    fn new(
        decoder: Box<dyn crate::format::Decoder>,
        new_batch: NewBatch,
        keep_raw: bool,
        n_slots: usize,
        piece_presence: Arc<std::sync::Mutex<FieldPresence>>,
    ) -> Self {
        Cutter {
            splitter: decoder.splitter(),
            decoder,
            pieces: None,
            batch: new_batch(),
            rejects: Rejects::new(keep_raw),
            bytes: 0,
            layout: None,
            presence: FieldPresence::new(n_slots),
            piece_presence,
            new_batch,
            keep_raw,
        }
    }

    /// Takes the object's next chunk.
    fn feed(&mut self, chunk: &Bytes, send: &mut SendBatch) -> Result<ControlFlow<()>> {
        let mut pos = 0;
        while pos < chunk.len() {
            let step = if self.pieces.is_some() {
                self.cut(chunk, pos, send)?
            } else {
                self.decode_step(chunk, pos, send)?
            };
            match step {
                ControlFlow::Continue(end) => pos = end,
                ControlFlow::Break(()) => return Ok(ControlFlow::Break(())),
            }
        }
        if let Some(p) = &mut self.pieces {
            if p.carry.is_empty() {
                // room for the whole piece (it is cut within a scan step past BATCH_BYTES): the
                // next chunk's part joins it without a reallocation (profiled: those copies were
                // ~0.6 % of B's CPU; a 1 MiB chunk leaves a piece's start at its end each time)
                p.carry
                    .reserve((BATCH_BYTES + SCAN_STEP).max(chunk.len() - p.start));
            }
            p.carry.extend_from_slice(&chunk[p.start..]);
            (p.start, p.cut) = (0, None);
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Decodes a step of `chunk` from `pos` on this thread, and starts cutting at the step's
    /// cut if the decoder can fork there. Returns where the step ends.
    fn decode_step(
        &mut self,
        chunk: &Bytes,
        pos: usize,
        send: &mut SendBatch,
    ) -> Result<ControlFlow<(), usize>> {
        let end = (pos + DECODE_PIECE).min(chunk.len());
        let cut = self
            .splitter
            .as_mut()
            .and_then(|s| s.scan(&chunk[pos..end]));
        let upto = cut.map_or(end, |c| pos + c.at);
        self.decode(&chunk[pos..upto])?;
        if let Some(cut) = cut
            && self.layout.is_some()
            && self.decoder.fork(cut.line).is_some()
        {
            // from here on, this thread only cuts: what it decoded goes first (sent even
            // without records: it carries the header's bytes)
            if !self.send_decoded(send) {
                return Ok(ControlFlow::Break(()));
            }
            self.pieces = Some(Pieces {
                splitter: self.splitter.take().expect("a cut comes from a splitter"),
                carry: Vec::new(),
                start: upto,
                line: cut.line,
                cut: None,
            });
            return Ok(ControlFlow::Continue(end));
        }
        self.decode(&chunk[upto..end])?;
        let full = self.batch.len() >= BATCH_ROWS
            || self.batch.byte_size() >= BATCH_BYTES
            || self.rejects.len() >= BATCH_ROWS;
        if full && !self.send_decoded(send) {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(end))
    }

    /// Scans a step of `chunk` from `pos`, and sends a piece once one is large enough. Returns
    /// where the step ends.
    fn cut(
        &mut self,
        chunk: &Bytes,
        pos: usize,
        send: &mut SendBatch,
    ) -> Result<ControlFlow<(), usize>> {
        let p = self.pieces.as_mut().expect("cutting");
        let end = (pos + SCAN_STEP).min(chunk.len());
        if let Some(cut) = p.splitter.scan(&chunk[pos..end]) {
            p.cut = Some((pos + cut.at, cut.line));
        }
        if let Some((at, line)) = p.cut
            && (p.carry.len() + (at - p.start) >= BATCH_BYTES || line - p.line >= BATCH_ROWS as u64)
        {
            let piece = if p.carry.is_empty() {
                chunk.slice(p.start..at)
            } else {
                p.carry.extend_from_slice(&chunk[p.start..at]);
                Bytes::from(std::mem::take(&mut p.carry))
            };
            let starts_on = p.line;
            (p.start, p.line, p.cut) = (at, line, None);
            if !self.send_piece(piece, starts_on, send)? {
                return Ok(ControlFlow::Break(()));
            }
        } else if p.carry.len() + (end - p.start) > MAX_PIECE {
            // no cut for too long: the rest of the object is decoded here
            let p = self.pieces.take().expect("cutting");
            self.decoder = self.fork(p.line)?;
            self.decode(&p.carry)?;
            self.decode(&chunk[p.start..end])?;
        }
        Ok(ControlFlow::Continue(end))
    }

    /// The object's end: sends what is left. Returns which fields some record carried, for a
    /// format without a header.
    fn finish(mut self, send: &mut SendBatch) -> Result<Option<FieldPresence>> {
        if let Some(p) = self.pieces.take() {
            // the last piece, maybe empty: its decoder finishes the object
            self.send_piece(Bytes::from(p.carry), p.line, send)?;
        } else {
            self.decoder.finish(&mut self.batch, &mut self.rejects)?;
            if self.layout.is_none() {
                self.layout = self.decoder.layout().map(Arc::new);
            }
            self.send_decoded(send);
        }
        Ok(self.headerless().then_some(self.presence))
    }

    /// Decodes `bytes` on this thread.
    fn decode(&mut self, bytes: &[u8]) -> Result<()> {
        self.decoder
            .decode(bytes, &mut self.batch, &mut self.rejects)?;
        self.bytes += bytes.len() as u64;
        if self.layout.is_none() {
            self.layout = self.decoder.layout().map(Arc::new);
        }
        Ok(())
    }

    fn send_decoded(&mut self, send: &mut SendBatch) -> bool {
        if self.headerless() {
            self.presence.observe(&self.batch);
        }
        let input = Input::Decoded {
            batch: std::mem::replace(&mut self.batch, (self.new_batch)()),
            rejects: std::mem::replace(&mut self.rejects, Rejects::new(self.keep_raw)),
        };
        send(
            BatchInput(input),
            &self.layout,
            std::mem::take(&mut self.bytes),
        )
    }

    fn send_piece(&self, bytes: Bytes, line: u64, send: &mut SendBatch) -> Result<bool> {
        let len = bytes.len() as u64;
        let input = Input::Piece {
            bytes,
            decoder: self.fork(line)?,
            new_batch: self.new_batch.clone(),
            keep_raw: self.keep_raw,
            presence: self.headerless().then(|| self.piece_presence.clone()),
        };
        Ok(send(BatchInput(input), &self.layout, len))
    }

    fn fork(&self, line: u64) -> Result<Box<dyn crate::format::Decoder>> {
        self.decoder.fork(line).ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                "the decoder cannot go on from a place its splitter cut",
            )
        })
    }

    fn headerless(&self) -> bool {
        self.layout.as_ref().is_some_and(|l| l.columns.is_none())
    }
}

/// The pipeline every input object goes through — a job's ([`PreparedJob::run`]) and
/// `keylink decrypt`'s:
///
/// - a task reads chunks;
/// - a blocking thread cuts them into batches of about [`BATCH_BYTES`] bytes or [`BATCH_ROWS`]
///   records and starts `work` on each as a task of its own, with the layout (once known) and
///   the bytes of input it holds;
/// - `deliver` gets the results one at a time, in input order.
///
/// The thread decodes the object's start itself, up to the header. If the format has a
/// [`Splitter`](crate::format::Splitter), it then only scans: each batch is a piece of the
/// object cut between records, which `work` decodes with a decoder
/// [forked](crate::format::Decoder::fork) from the thread's, so decoding runs on every core.
/// Otherwise (and after a record longer than [`MAX_PIECE`]) the thread decodes on, into batches
/// of at most [`BATCH_ROWS`] records or [`BATCH_BYTES`] bytes (refilling those `new_batch`
/// gives).
///
/// At most `in_flight + 2` batches are started and not yet delivered, which bounds memory:
/// `in_flight` queued for the writer, one it is delivering, and one just cut, started and
/// waiting for room in the queue (tested). Returns, for a format without a header, which fields
/// some record carried (the job checks that every named field was seen); `None` for a format
/// with a header or an empty object (which is logged and skipped). On error, the root cause is
/// returned: a read error before the decode error it caused, before a delivery error.
pub(crate) async fn run_pipeline<P, Fut>(
    p: Pipeline<'_>,
    new_batch: impl Fn() -> RecordBatch + Send + Sync + 'static,
    work: impl Fn(BatchInput, Option<Arc<Layout>>, u64) -> Fut + Send + 'static,
    mut deliver: impl AsyncFnMut(P) -> Result<()>,
) -> Result<Option<FieldPresence>>
where
    P: Send + 'static,
    Fut: std::future::Future<Output = Result<P>> + Send + 'static,
{
    let Pipeline {
        mut reader,
        format,
        fields,
        keep_raw,
        in_flight,
        described,
    } = p;
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Bytes>(4);
    let read_task: JoinHandle<Result<()>> = tokio::spawn(async move {
        while let Some(chunk) = reader.read_chunk().await? {
            if chunk_tx.send(chunk).await.is_err() {
                break; // the decoder stopped (an error elsewhere)
            }
        }
        Ok(())
    });

    let (work_tx, mut work_rx) = mpsc::channel::<JoinHandle<Result<P>>>(in_flight.max(1));
    let rt = tokio::runtime::Handle::current();
    let decoder = format.decoder(fields);
    let n_slots = fields.len();
    // what the pieces' records carried (formats without a header)
    let piece_presence = Arc::new(std::sync::Mutex::new(FieldPresence::new(n_slots)));
    let pieces_saw = piece_presence.clone();
    let decode_task = tokio::task::spawn_blocking(move || -> Result<Option<FieldPresence>> {
        let mut send = |input: BatchInput, layout: &Option<Arc<Layout>>, bytes: u64| {
            let h = rt.spawn(work(input, layout.clone(), bytes));
            work_tx.blocking_send(h).is_ok()
        };
        let new_batch: NewBatch = Arc::new(new_batch);
        let mut cutter = Cutter::new(decoder, new_batch, keep_raw, n_slots, pieces_saw);
        let mut total_bytes = 0u64;
        while let Some(chunk) = chunk_rx.blocking_recv() {
            total_bytes += chunk.len() as u64;
            if cutter.feed(&chunk, &mut send)?.is_break() {
                return Ok(None); // the pipeline stopped: its error is returned below
            }
        }
        if total_bytes == 0 {
            tracing::warn!(object = %described, "input object is empty; skipped");
            return Ok(None);
        }
        cutter.finish(&mut send)
    });

    let mut deliver_result: Result<()> = Ok(());
    while let Some(handle) = work_rx.recv().await {
        let done = match handle.await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                deliver_result = Err(e);
                break;
            }
            Err(join) => {
                deliver_result = Err(Error::new(
                    ErrorKind::Other,
                    format!("a worker failed: {join}"),
                ));
                break;
            }
        };
        if let Err(e) = deliver(done).await {
            deliver_result = Err(e);
            break;
        }
    }
    drop(work_rx); // unblocks the decoder if we stopped early
    let decode_result = decode_task
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("the decoder failed: {e}")))?;
    let read_result = read_task
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("the reader failed: {e}")))?;
    // the root cause first: a read error explains a decode stop, which explains a write stop
    read_result?;
    let presence = decode_result?;
    deliver_result?;
    // every piece was decoded: its batch was delivered
    Ok(presence.map(|mut p| {
        p.merge(&piece_presence.lock().unwrap_or_else(|p| p.into_inner()));
        p
    }))
}

/// Classify → resolve keys → encrypt → encode, for one batch.
async fn process_batch(
    sh: Arc<Shared>,
    input: BatchInput,
    layout: Option<Arc<Layout>>,
    bytes: u64,
) -> Result<Processed> {
    let plan = sh.plan.clone();
    let permit = sh.cpu.clone().acquire_owned().await.map_err(|_| {
        Error::new(
            ErrorKind::Other,
            "the job stopped while a batch waited for a core",
        )
    })?;
    let (batch, mut rejects, mut classified) = tokio::task::spawn_blocking(move || {
        let (batch, mut rejects) = input.decode()?;
        let c = plan.classify(&batch, &mut rejects);
        Ok::<_, Error>((batch, rejects, c))
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Other, format!("a worker failed: {e}")))??;
    // waiting for keys takes no core: another batch may use it meanwhile
    drop(permit);
    let keys = sh
        .resolver
        .resolve(&sh.plan, &batch, &mut classified)
        .await?;
    let permit = sh.cpu.clone().acquire_owned().await.map_err(|_| {
        Error::new(
            ErrorKind::Other,
            "the job stopped while a batch waited for a core",
        )
    })?;
    let sh2 = sh.clone();
    let durable_after = keys.durable_after;
    let transform = tokio::task::spawn_blocking(move || -> Result<Processed> {
        let _permit = permit;
        let sh = sh2;
        let rows_accepted = classified.rows.len() as u64;
        // the privacy transform fills the rows of the encrypted and every derived output at
        // once (each PII cell is encrypted once and shared)
        let mut kept_rows = sh.rows.take().unwrap_or_default();
        sh.plan.output_rows_into(
            &batch,
            &classified,
            &keys,
            sh.has(OutputKind::Encrypted),
            &mut kept_rows,
        )?;
        let (enc_rows, derived_rows) = &kept_rows;
        let rows_read = batch.len() as u64 + decoder_rejects(&rejects, &classified, &batch);
        // the rejected output holds what has raw bytes: a record too large to keep has none
        let rejected_rows = (rejects.raw_records() + classified.rejected.len()) as u64;
        let (rejects, decoder_raw) = rejects.drain();
        let mut decoder_raw = Some(decoder_raw);
        let mut outputs = Vec::with_capacity(sh.outputs.len());
        let mut key_rows: Vec<(uuid::Uuid, usize)> =
            keys.first_use.iter().map(|k| (k.key_link, 0)).collect();
        let mut encoders = layout
            .as_ref()
            .map(|l| sh.encoders.take(l, sh.outputs.len()));
        for (i, holds) in sh.outputs.iter().enumerate() {
            let mut bytes = Vec::new();
            let rows = match (holds, &mut encoders) {
                (OutputPlan::Keys(_), _) => {
                    if !keys.first_use.is_empty() {
                        bytes = sh.buffers.take(i);
                        let mut w = sh
                            .keys
                            .as_ref()
                            .ok_or_else(|| {
                                Error::new(ErrorKind::Other, "the keys output has no encoder")
                            })?
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        for (k, row) in keys.first_use.iter().zip(&mut key_rows) {
                            w.write(k, &sh.policy_id, &mut bytes)?;
                            row.1 = bytes.len();
                        }
                    }
                    keys.first_use.len() as u64
                }
                (OutputPlan::Rejected, _) => {
                    // what the decoder rejected comes as it was read; what classify rejected
                    // is written back by the input's format
                    bytes = decoder_raw.take().unwrap_or_default();
                    if let Some(encoders) = &mut encoders
                        && !classified.rejected.is_empty()
                    {
                        let enc = encoders.get(i, sh.input_format.as_ref(), &sh.plan)?;
                        for &r in &classified.rejected {
                            enc.encode_unchanged(&batch, r as usize, &mut bytes)?;
                        }
                    }
                    rejected_rows
                }
                (
                    OutputPlan::Encrypted(format) | OutputPlan::Derived(_, format),
                    Some(encoders),
                ) if rows_accepted > 0 => {
                    let rows = match holds {
                        OutputPlan::Derived(i, _) => &derived_rows[*i],
                        _ => enc_rows,
                    };
                    // base64 ciphertext is ~4/3 of the value plus 28 bytes, and 4 metadata
                    // columns are added: 1.5x the input's share of these rows is close without
                    // over-reserving (a derived output has fewer rows, and plaintext or masks
                    // in some fields; growing by doubling was 1% of B's CPU)
                    let share = batch.byte_size() * rows.len() / batch.len().max(1);
                    if !rows.is_empty() {
                        // a buffer an earlier batch's writer gave back, if there is one
                        bytes = sh.buffers.take(i);
                        bytes.reserve(share + share / 2);
                        encoders
                            .get(i, format.as_ref(), &sh.plan)?
                            .encode(&batch, rows, &mut bytes)?;
                    }
                    rows.len() as u64
                }
                (OutputPlan::Encrypted(_) | OutputPlan::Derived(..), _) => 0,
            };
            outputs.push((bytes, rows));
        }
        if let Some(encoders) = encoders {
            sh.encoders.put(encoders);
        }
        sh.rows.put(kept_rows);
        sh.spare.put(batch);
        Ok(Processed {
            outputs,
            key_rows,
            rejects,
            rows_read,
            rows_accepted,
            consent_defaulted: classified.consent_defaulted,
            bytes,
            layout,
            durable_after,
        })
    });
    // The keys are made durable while the batch is transformed, so that the writer (which
    // checks again before it writes, SPEC §2) finds them durable and does not wait: syncing in
    // the writer put every flush on the ordered path, and batches waited behind it (traced at
    // 1M rows: 334 ms of the writer's 710 ms were syncs, while the decoder waited for a slot).
    let (synced, processed) = tokio::join!(sh.resolver.sync(durable_after), transform);
    synced?;
    processed.map_err(|e| Error::new(ErrorKind::Other, format!("a worker failed: {e}")))?
}

/// Keeps, of a batch's keys-export rows (`bytes`, rows ending where `rows` says), those
/// `claimed` (usually all: a key an earlier batch claimed is left out), and counts them. The
/// rows left out are zeroized: they hold keys in clear.
fn keep_claimed_rows(bytes: &mut Vec<u8>, rows: &[(uuid::Uuid, usize)], claimed: &[bool]) -> u64 {
    if claimed.iter().all(|&c| c) {
        return rows.len() as u64;
    }
    let (mut kept, mut start, mut end_kept) = (0, 0, 0);
    for (&(_, end), &claim) in rows.iter().zip(claimed) {
        if claim {
            bytes.copy_within(start..end, end_kept);
            end_kept += end - start;
            kept += 1;
        }
        start = end;
    }
    bytes[end_kept..].zeroize();
    bytes.truncate(end_kept);
    kept
}

/// Rejects made by the decoder (the rest were made by classify, from records in the batch).
fn decoder_rejects(
    rejects: &Rejects,
    classified: &crate::privacy::Classified,
    batch: &RecordBatch,
) -> u64 {
    let by_classify = batch.len() - classified.rows.len();
    (rejects.len() - by_classify) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::lines::Lines;
    use crate::record::FieldPlan;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out `chunks`, then fails with `fail` if given.
    struct Chunks {
        chunks: std::vec::IntoIter<Bytes>,
        fail: Option<&'static str>,
    }

    #[async_trait::async_trait]
    impl crate::connector::ObjectReader for Chunks {
        async fn read_chunk(&mut self) -> Result<Option<Bytes>> {
            match (self.chunks.next(), self.fail) {
                (Some(c), _) => Ok(Some(c)),
                (None, Some(why)) => Err(Error::new(ErrorKind::Io, why)),
                (None, None) => Ok(None),
            }
        }
    }

    /// `records` records after a header, `BATCH_ROWS` to a batch, in chunks of 10,000 bytes;
    /// with `fail`, the read fails after the first chunk.
    fn input(records: usize, fail: Option<&'static str>) -> Box<Chunks> {
        let mut text = String::from("n\n");
        for i in 0..records {
            text.push_str(&format!("{i}\n"));
        }
        let mut chunks: Vec<Bytes> = text
            .as_bytes()
            .chunks(10_000)
            .map(Bytes::copy_from_slice)
            .collect();
        if fail.is_some() {
            chunks.truncate(1);
        }
        Box::new(Chunks {
            chunks: chunks.into_iter(),
            fail,
        })
    }

    fn pipeline(
        reader: Box<Chunks>,
        fields: &FieldPlan,
        in_flight: usize,
        split: bool,
    ) -> Pipeline<'_> {
        Pipeline {
            reader,
            format: Arc::new(if split { Lines::Split } else { Lines::Whole }),
            fields,
            keep_raw: false,
            in_flight,
            described: "test".into(),
        }
    }

    /// Batches started and not yet delivered: now, and the most seen.
    #[derive(Default)]
    struct Alive {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    /// Of a batch's keys-export rows, the writer keeps those it claimed, in their order.
    #[test]
    fn only_the_claimed_key_rows_are_written() {
        let rows_of = |text: &str| {
            let mut end = 0;
            text.split_inclusive('\n')
                .map(|r| {
                    end += r.len();
                    (uuid::Uuid::new_v4(), end)
                })
                .collect::<Vec<_>>()
        };
        let text = "a\nbb\nccc\n";
        let rows = rows_of(text);
        for (claimed, kept, n) in [
            ([true, true, true], "a\nbb\nccc\n", 3),
            ([false, true, false], "bb\n", 1),
            ([true, false, true], "a\nccc\n", 2),
            ([false, false, false], "", 0),
        ] {
            let mut bytes = text.as_bytes().to_vec();
            assert_eq!(keep_claimed_rows(&mut bytes, &rows, &claimed), n);
            assert_eq!(std::str::from_utf8(&bytes).unwrap(), kept, "{claimed:?}");
        }
    }

    /// The engine's memory bound: however slow the writer, at most `in_flight` batches wait in
    /// the queue, one is being delivered and one, just decoded, waits for room (each started).
    /// Results come in input order, and every record arrives once, also when the batches'
    /// tasks decode pieces of the object.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_in_flight_are_bounded_and_delivered_in_order() {
        let fields = FieldPlan::new();
        for (in_flight, split) in [(1, false), (3, false), (1, true), (3, true)] {
            let alive = Arc::new(Alive::default());
            let a = alive.clone();
            let mut delivered: Vec<(u64, usize)> = Vec::new();
            let records = 40 * BATCH_ROWS + 7;
            run_pipeline(
                pipeline(input(records, None), &fields, in_flight, split),
                || RecordBatch::new(0),
                move |input: BatchInput, _, _| {
                    let now = a.now.fetch_add(1, Ordering::SeqCst) + 1;
                    a.most.fetch_max(now, Ordering::SeqCst);
                    async move {
                        let (batch, _) = input.decode()?;
                        Ok((batch.record(0).line(), batch.len()))
                    }
                },
                async |first_line_and_len| {
                    // a slow writer: the decoder fills every slot it may
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    delivered.push(first_line_and_len);
                    alive.now.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                },
            )
            .await
            .unwrap();
            let most = alive.most.load(Ordering::SeqCst);
            assert!(
                most <= in_flight + 2,
                "{most} batches alive, in_flight {in_flight}, split {split}"
            );
            // a batch is cut once it holds BATCH_ROWS, after the piece of input that filled it;
            // a piece, once it holds BATCH_ROWS lines
            assert!(delivered.len() > 30, "{} batches", delivered.len());
            let mut next_line = 2; // line 1 is the header
            for &(line, len) in &delivered {
                assert_eq!(line, next_line, "out of order");
                next_line += len as u64;
            }
            assert_eq!(next_line, records as u64 + 2);
        }
    }

    /// A record longer than [`MAX_PIECE`] is not held whole to make a piece: from there on the
    /// pipeline's thread decodes, and every record still arrives once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_record_longer_than_a_piece_the_pipeline_decodes_on_its_thread() {
        let fields = FieldPlan::new();
        let mut text = b"n\n".to_vec();
        // the pipeline's thread decodes the first DECODE_PIECE itself
        for i in 0..20 * BATCH_ROWS {
            text.extend_from_slice(format!("{i}\n").as_bytes());
        }
        let long = MAX_PIECE + 3;
        text.extend(std::iter::repeat_n(b'x', long));
        text.push(b'\n');
        for i in 0..3 * BATCH_ROWS {
            text.extend_from_slice(format!("{i}\n").as_bytes());
        }
        let reader = Box::new(Chunks {
            chunks: text
                .chunks(1 << 20)
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>()
                .into_iter(),
            fail: None,
        });
        // (first line, records, longest record, decoded by `work`)
        let mut delivered: Vec<(u64, usize, usize, bool)> = Vec::new();
        run_pipeline(
            pipeline(reader, &fields, 2, true),
            || RecordBatch::new(0),
            |input: BatchInput, _, _| async move {
                let piece = input.is_piece();
                let (batch, _) = input.decode()?;
                let longest = batch.records().map(|r| r.raw().len()).max().unwrap_or(0);
                let first = batch.records().next().map_or(0, |r| r.line());
                Ok((first, batch.len(), longest, piece))
            },
            async |d| {
                delivered.push(d);
                Ok(())
            },
        )
        .await
        .unwrap();
        let records: usize = delivered.iter().map(|d| d.1).sum();
        assert_eq!(records, 23 * BATCH_ROWS + 1);
        let mut next_line = 2;
        for &(line, len, _, _) in delivered.iter().filter(|d| d.1 > 0) {
            assert_eq!(line, next_line, "out of order");
            next_line += len as u64;
        }
        let at = delivered
            .iter()
            .position(|d| d.2 == long)
            .expect("the long record");
        assert!(
            delivered[..at].iter().any(|d| d.3),
            "pieces before the long record"
        );
        assert!(
            delivered[at..].iter().all(|d| !d.3),
            "pieces after the long record"
        );
    }

    /// A writer's error stops the decoder (it does not wait for room forever) and is returned;
    /// a read error is returned before it, as the root cause.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_error_stops_the_pipeline_and_a_read_error_comes_first() {
        let fields = FieldPlan::new();
        let cases = [None, Some("the disk went away")].into_iter();
        for (fail, split) in cases.flat_map(|f| [(f, false), (f, true)]) {
            let decoded = Arc::new(AtomicUsize::new(0));
            let d = decoded.clone();
            let run = run_pipeline(
                pipeline(input(20 * BATCH_ROWS, fail), &fields, 2, split),
                || RecordBatch::new(0),
                move |input: BatchInput, _, _| {
                    d.fetch_add(1, Ordering::SeqCst);
                    async move { Ok(input.decode()?.0.len()) }
                },
                async |_: usize| Err(Error::new(ErrorKind::Io, "the output is full")),
            );
            let e = tokio::time::timeout(std::time::Duration::from_secs(20), run)
                .await
                .expect("the pipeline stopped")
                .unwrap_err()
                .to_string();
            match fail {
                // the decoder stopped early: the first delivery failed
                None => {
                    assert!(e.contains("the output is full"), "{e}");
                    let decoded = decoded.load(Ordering::SeqCst);
                    assert!(decoded < 20, "every batch was decoded");
                }
                // the reader's error, though the writer failed too (on what was read before)
                Some(why) => {
                    assert!(e.contains(why), "{e}");
                    let decoded = decoded.load(Ordering::SeqCst);
                    // split: the header's batch, and the rest of the chunk as the last piece
                    let batches = if split { 2 } else { 1 };
                    assert_eq!(decoded, batches, "the first chunk was not decoded");
                }
            }
        }
    }
}
