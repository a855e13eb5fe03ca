//! # keylink — the command-line tool
//!
//! ```text
//! keylink demo [DIR]                     create a demo dataset, contract, job and config; run it
//! keylink run JOB.json [--config F]      run a batch job
//! keylink validate JOB.json [--config F] check a job, its contract and connectors; write nothing
//! keylink list                           compiled connectors, formats, key stores
//! keylink subjects keylinks|list|forget   a data subject's keys; forgetting one (SPEC §9)
//! keylink keys stats|export|purge|audit|rotate-master   key lifecycle (SPEC §9)
//! keylink stream STREAM.json [--config F] run a stream job until SIGINT/SIGTERM
//! keylink --version                      version, compiled connectors and formats
//! ```
//!
//! Exit codes: 0 success, 1 finished but some records were rejected, 2 error.
//!
//! The binary is this library's [`main`], so a third party can ship a binary with their own
//! connector compiled in:
//!
//! ```ignore
//! use their_connector as _; // registers `{ "type": "theirs" }`
//! fn main() { keylink::main() }
//! ```

#![deny(missing_docs)]

mod demo;
#[cfg(feature = "http")]
mod gateway;
mod lifecycle;
mod output;
mod schema;
mod stream;
#[cfg(test)]
mod stream_consent_tests;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keylink_core::engine::{self, Mode, RunOptions};
use keylink_core::job::{BatchJob, Config};

// Registration that cannot vanish: every enabled plugin crate is referenced here (its typetag
// deserializer and its `keylink_core::register!` description are linked in), and
// `tests::every_registered_component_deserializes` checks each one's example.
#[cfg(feature = "azure")]
use keylink_connector_azure as _;
#[cfg(feature = "gcs")]
use keylink_connector_gcs as _;
#[cfg(feature = "kafka")]
use keylink_connector_kafka as _;
#[cfg(feature = "local")]
use keylink_connector_local as _;
#[cfg(feature = "s3")]
use keylink_connector_s3 as _;
#[cfg(feature = "csv")]
use keylink_format_csv as _;
#[cfg(feature = "jsonl")]
use keylink_format_jsonl as _;
#[cfg(feature = "postgres")]
use keylink_keystore_postgres as _;

#[derive(Debug, Parser)]
#[command(
    name = "keylink",
    about = "Privacy-by-design data pipelines: encrypt PII per session and day, export the keys, \
             derive purpose-bound datasets.",
    disable_version_flag = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Print the version and the compiled connectors and formats.
    #[arg(short = 'V', long)]
    version: bool,
    /// More logging (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a batch job.
    Run {
        /// The batch-job file (JSON or YAML).
        job: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Batches processed at once (default: number of cores).
        #[arg(long)]
        parallelism: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Keep running: every interval, process each new (or changed) object of the source as
        /// its own all-or-nothing unit, until SIGINT/SIGTERM. Needs {input} in every target's
        /// file_name and a batch_job_group_id.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        watching: WatchArgs,
        /// Run the I-th of N slices of the inputs (0 ≤ I < N) as one of N workers sharing the
        /// key store; outputs go to <stem>.part-I-of-N.<ext>. Default: JOB_COMPLETION_INDEX and
        /// KEYLINK_SHARDS when set. Needs batch_job_group_id. See `keylink finalize`.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
    },
    /// List the connectors, formats and key stores compiled into this binary (third parties'
    /// included), with a one-line description, the URL schemes they serve and an example config.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check that all N shards of a sharded job committed and write the `_SUCCESS` manifest
    /// (parts, row counts, sizes, SHA-256) next to the first output.
    Finalize {
        /// The batch-job file the shards ran.
        job: PathBuf,
        #[command(flatten)]
        common: Common,
        /// How many shards the job ran in.
        #[arg(long)]
        shards: u32,
        /// Print the manifest as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show what a watcher (`keylink run JOB --watch`) has processed: per object its status,
    /// when, the counts and the outputs.
    WatchStatus {
        /// The batch-job file the watcher runs.
        job: PathBuf,
        /// The watcher's state file (default: next to the job, <job stem>.watch-state.jsonl).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a job, its contract and its connectors without writing anything.
    Validate {
        /// The batch-job file (JSON or YAML).
        job: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Run a stream job (events from a Kafka topic or the HTTP gateway to encrypted, derived and
    /// rejected topics) until SIGINT/SIGTERM, then finish the work in hand and exit 0.
    Stream {
        /// The stream-job file (JSON or YAML).
        job: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Events taken from the source at once (each batch is delivered to every output, then
        /// committed).
        #[arg(long, default_value_t = 500)]
        max_batch: usize,
    },
    /// Derive a dataset later from an encrypted dataset and a keys export (same consent, purpose
    /// and masking rules as a job's derived_data). Locations: a local path, NAME:PATH for a
    /// connector of the config file, or scheme://bucket/path (e.g. s3://lake/out/enc.csv,
    /// gs://lake/out/enc.csv, az://container/out/enc.csv).
    Decrypt(DecryptArgs),
    /// Data subjects: their keyLinks, the list of subjects, forgetting one (SPEC §9).
    #[command(subcommand)]
    Subjects(lifecycle::SubjectsCommand),
    /// Keys: stats, export, purge, audit, master key rotation (SPEC §9).
    #[command(subcommand)]
    Keys(lifecycle::KeysCommand),
    /// Print the JSON Schema (draft 2020-12) of a job, config or contract file, covering every
    /// component compiled into this binary (for editors: see the README).
    Schema {
        /// Which file.
        #[arg(value_enum)]
        what: schema::What,
    },
    /// Create a small realistic dataset, contract, job and config in DIR, and run the job.
    Demo {
        /// Where to create the demo (default ./keylink-demo).
        #[arg(default_value = "keylink-demo")]
        dir: PathBuf,
        /// Number of rows to generate.
        #[arg(long, default_value_t = 1000)]
        rows: usize,
    },
}

#[derive(Debug, clap::Args)]
struct DecryptArgs {
    /// The encrypted dataset.
    #[arg(long)]
    input: String,
    /// The keys export (keyLink,encryptionKey,policyId,expiresAt).
    #[arg(long)]
    keys: String,
    /// The data contract the dataset was encrypted under.
    #[arg(long)]
    contract: PathBuf,
    /// The purposes (consent levels) the output is for, e.g. 1,2.
    #[arg(long, value_delimiter = ',', required = true)]
    purposes: Vec<i32>,
    /// How record consent is compared with the purposes.
    #[arg(long = "type", value_enum, default_value_t = ConsentType::Granular)]
    kind: ConsentType,
    /// Fields to replace by a keyed hash (names or globs), e.g. Email,User*.
    #[arg(long, value_delimiter = ',')]
    mask: Vec<String>,
    /// The masking seed. Prefer --seed-file or KEYLINK_MASK_SEED: a command line is visible to
    /// other users of the machine.
    #[arg(
        long,
        env = "KEYLINK_MASK_SEED",
        hide_env_values = true,
        conflicts_with = "seed_file"
    )]
    seed: Option<String>,
    /// A file holding the masking seed.
    #[arg(long)]
    seed_file: Option<PathBuf>,
    /// Where the derived dataset goes.
    #[arg(long)]
    output: String,
    /// csv or jsonl (default: from the input's extension).
    #[arg(long)]
    format: Option<String>,
    /// The config file, for NAME:PATH locations.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ConsentType {
    Granular,
    Cumulative,
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Seconds between two listings of the source (with --watch).
    #[arg(long, default_value_t = 60, requires = "watch")]
    interval: u64,
    /// The watcher's record of processed objects (default: next to the job,
    /// <job stem>.watch-state.jsonl).
    #[arg(long, requires = "watch")]
    state: Option<PathBuf>,
    /// How often an object that fails as a whole is tried before the watcher gives up on it
    /// until it changes.
    #[arg(long, default_value_t = 3, requires = "watch")]
    max_attempts: u32,
}

/// The default watch state file of a job: `<dir>/<stem>.watch-state.jsonl`.
fn default_state(job: &Path) -> PathBuf {
    let stem = job.file_stem().unwrap_or_default().to_string_lossy();
    job.with_file_name(format!("{stem}.watch-state.jsonl"))
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The config file (connectors, contracts directory, key store). Default: keylink.yaml next
    /// to the job file, else in the current directory.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Use this contract file instead of looking the job's contract ref up.
    #[arg(long)]
    contract: Option<PathBuf>,
}

/// Runs the CLI and exits with its exit code.
pub fn main() -> ! {
    let code = run_cli(std::env::args_os());
    std::process::exit(code)
}

/// Runs the CLI on `args` and returns the exit code (0 ok, 1 rejects, 2 error).
pub fn run_cli<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if cli.version {
        output::print(&version_text());
        return 0;
    }
    init_logging(cli.verbose);
    let Some(command) = cli.command else {
        return 2;
    };
    // CPU work runs on the blocking pool (one task per batch step); a small pool keeps the number
    // of allocating threads — and so glibc's per-thread arenas and their fragmentation — bounded.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(cores + 4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&anyhow::Error::new(e).context("cannot start the runtime"));
            return 2;
        }
    };
    match rt.block_on(dispatch(command)) {
        Ok(code) => code as i32,
        Err(e) => {
            output::error(&e);
            2
        }
    }
}

/// The `--version` text.
pub fn version_text() -> String {
    use keylink_core::registry::{Kind, of_kind};
    let names = |kind| {
        of_kind(kind)
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "keylink {}\nconnectors: {}\nformats: {}\nkey stores: {}\n",
        env!("CARGO_PKG_VERSION"),
        names(Kind::Connector),
        names(Kind::Format),
        names(Kind::KeyStore)
    )
}

/// Logging to stderr. keylink's own crates (and third-party plug-ins named `keylink*`: a target
/// directive matches every target it is a prefix of) log at `warn` by default, `info` with `-v`;
/// libraries (an SDK's credential-chain chatter) show only errors by default and their warnings
/// from `-v` on (SPEC §8); `-vv` shows everything at `debug`. `RUST_LOG` overrides all of it.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "error,keylink=warn",
        1 => "warn,keylink=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::Run {
            job,
            common,
            json,
            parallelism,
            watch: true,
            watching,
            shard,
            ..
        } => {
            if shard.is_some() || shard_from_env()?.is_some() {
                anyhow::bail!(
                    "--watch cannot be sharded (--shard, or {} and {} set): a watcher processes \
                     each object as its own unit already",
                    keylink_core::shard::INDEX_ENV,
                    keylink_core::shard::SHARDS_ENV
                );
            }
            watch_job(&job, &common, json, parallelism, &watching).await
        }
        Command::List { json } => {
            let all = keylink_core::registry::components();
            if json {
                let list: Vec<serde_json::Value> = all
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "kind": c.kind,
                            "name": c.name,
                            "description": c.description,
                            "schemes": c.schemes,
                            "example": serde_json::from_str::<serde_json::Value>(c.example)
                                .unwrap_or(serde_json::Value::Null),
                        })
                    })
                    .collect();
                output::print(&(serde_json::to_string_pretty(&list)? + "\n"));
            } else {
                output::print(&output::list_text(&all));
            }
            Ok(0)
        }
        Command::Finalize {
            job,
            common,
            shards,
            json,
        } => {
            let (checked, config) = check(&job, &common).await?;
            let manifest = checked.finalize(&config, shards).await.with_context(|| {
                format!("cannot finalize {}; no _SUCCESS was written", job.display())
            })?;
            if json {
                output::print(&(serde_json::to_string_pretty(&manifest)? + "\n"));
            } else {
                output::print(&output::finalize_text(&job, &manifest));
            }
            Ok(0)
        }
        Command::WatchStatus { job, state, json } => {
            let path = state.unwrap_or_else(|| default_state(&job));
            if !path.exists() {
                anyhow::bail!(
                    "{}: no watch state (has `keylink run {} --watch` run yet?)",
                    path.display(),
                    job.display()
                );
            }
            let entries = keylink_core::watch::WatchState::read(&path)?;
            if json {
                let mut out = String::new();
                for e in &entries {
                    out.push_str(&serde_json::to_string(e)?);
                    out.push('\n');
                }
                output::print(&out);
            } else {
                output::print(&output::watch_status_text(&path, &entries));
            }
            Ok(0)
        }
        Command::Run {
            job,
            common,
            json,
            parallelism,
            no_progress,
            shard,
            ..
        } => {
            let shard = match shard {
                Some(s) => Some(s.parse::<keylink_core::shard::Shard>()?),
                None => shard_from_env()?,
            };
            let progress = (!no_progress && !json && std::io::stderr().is_terminal())
                .then(|| Arc::new(output::ProgressBar::new()) as Arc<dyn engine::Progress>);
            let summary = run_job(&job, &common, parallelism, shard, progress.clone()).await?;
            if let Some(p) = &progress {
                p.advance(0, 0);
            }
            drop(progress);
            if json {
                output::print(&(serde_json::to_string_pretty(&summary)? + "\n"));
            } else {
                output::print(&output::summary_text(&job, &summary));
            }
            Ok(if summary.has_rejects() { 1 } else { 0 })
        }
        Command::Validate { job, common } => {
            // checked only: no key store opened, no sink built, nothing created
            let (checked, _) = check(&job, &common).await?;
            let inputs = checked.inputs().await?;
            output::print(&output::validate_text(&job, &checked, &inputs));
            Ok(0)
        }
        Command::Decrypt(args) => decrypt(args).await,
        Command::Stream {
            job,
            common,
            max_batch,
        } => stream::run(&job, &common, max_batch).await,
        Command::Demo { dir, rows } => demo::run(&dir, rows).await,
        Command::Schema { what } => schema::run(what),
        Command::Subjects(c) => lifecycle::subjects(c).await,
        Command::Keys(c) => lifecycle::keys(c).await,
    }
}

/// Loads a job and its config (explicit, or `keylink.yaml` next to the job, or in the current
/// directory, or an empty config relative to the job's folder).
fn load(job_file: &Path, common: &Common) -> Result<(BatchJob, Config)> {
    let config = load_config(job_file, common)?;
    let job = BatchJob::from_file(job_file)?;
    Ok((job, config))
}

/// The config of a job file (see [`load`]), with the default key store filled in.
fn load_config(job_file: &Path, common: &Common) -> Result<Config> {
    let job_dir = job_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let config_file = match &common.config {
        Some(c) => Some(c.clone()),
        None => ["keylink.yaml", "keylink.yml"]
            .iter()
            .flat_map(|n| [job_dir.join(n), PathBuf::from(n)])
            .find(|p| p.is_file()),
    };
    let mut config = match &config_file {
        Some(c) => Config::from_file(c)?,
        None => Config::empty(job_dir.to_path_buf()),
    };
    if config.key_store.is_none() {
        // The default key store: `./keylink-keys.db` next to the config.
        config.key_store = Some(Box::new(
            keylink_keystore_embedded::EmbeddedKeyStoreConfig::default(),
        ));
    }
    Ok(config)
}

/// Resolves a location: `NAME:PATH` (a connector of the config), `scheme://bucket/path`, or a
/// local path.
async fn location(
    spec: &str,
    config: &Config,
    write: bool,
) -> Result<keylink_core::decrypt::Location> {
    use keylink_core::ConnectorConfig;
    use keylink_core::connector::BuildContext;
    let (cfg, base, path): (Box<dyn ConnectorConfig>, PathBuf, String) =
        if let Some((scheme, rest)) = spec.split_once("://") {
            let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
            // the connector that serves the scheme says what its config is
            let component = keylink_core::registry::for_scheme(scheme)
                .filter(|c| c.from_url.is_some())
                .with_context(|| {
                    format!(
                        "{spec}: no connector of this binary serves '{scheme}://' locations \
                         (it serves {})",
                        keylink_core::registry::schemes()
                            .iter()
                            .map(|s| format!("{s}://"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            let from_url = component.from_url.expect("filtered above");
            let json = from_url(bucket, config).with_context(|| spec.to_string())?;
            let cfg = serde_json::from_value(json)
                .with_context(|| format!("{spec}: the {} connector's config", component.name))?;
            (cfg, PathBuf::from("."), path.to_string())
        } else if let Some((name, path)) = spec.split_once(':')
            && let Some(c) = config.connectors.get(name)
        {
            let json = serde_json::to_value(c)?;
            (
                serde_json::from_value(json)?,
                config.base_dir.clone(),
                path.to_string(),
            )
        } else {
            let p = Path::new(spec);
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("{spec}: not a file path"))?;
            let cfg = serde_json::from_value(serde_json::json!({"type": "local", "root": dir}))
                .context("local paths need the local connector (feature `local`)")?;
            (cfg, PathBuf::from("."), name.to_string())
        };
    cfg.validate()?;
    let ctx = BuildContext { base_dir: base };
    let id = cfg
        .location(&ctx, &path)
        .with_context(|| format!("{spec}: cannot resolve the location"))?;
    Ok(keylink_core::decrypt::Location {
        id,
        source: if write {
            None
        } else {
            Some(cfg.build_source(&ctx).await?)
        },
        sink: if write {
            Some(cfg.build_sink(&ctx).await?)
        } else {
            None
        },
        path,
    })
}

/// `keylink decrypt`.
async fn decrypt(a: DecryptArgs) -> Result<u8> {
    use keylink_core::FormatConfig;
    let config = match &a.config {
        Some(c) => Config::from_file(c)?,
        None if Path::new("keylink.yaml").is_file() => {
            Config::from_file(Path::new("keylink.yaml"))?
        }
        None => Config::empty(PathBuf::from(".")),
    };
    let format_name = a.format.clone().unwrap_or_else(|| {
        let lower = a.input.to_ascii_lowercase();
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") || lower.ends_with(".json") {
            "jsonl".into()
        } else {
            "csv".into()
        }
    });
    let build = |name: &str| -> Result<std::sync::Arc<dyn keylink_core::Format>> {
        let cfg: Box<dyn FormatConfig> = serde_json::from_value(serde_json::json!({ name: {} }))
            .map_err(|e| {
                anyhow::anyhow!("format '{name}' is not compiled into this keylink ({e})")
            })?;
        Ok(cfg.build()?)
    };
    let format = build(&format_name)?;
    let csv = build("csv")?;
    let seed = match (&a.seed, &a.seed_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the seed file {}", f.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        (None, None) => None,
    };
    let request = keylink_core::decrypt::DecryptRequest {
        contract: keylink_core::contract::DataContract::from_file(&a.contract)?,
        purposes: a.purposes.clone(),
        kind: match a.kind {
            ConsentType::Granular => keylink_core::job::ConsentLevelType::Granular,
            ConsentType::Cumulative => keylink_core::job::ConsentLevelType::Cumulative,
        },
        mask: a.mask.clone(),
        seed: seed.map(keylink_core::Sensitive::new),
    };
    let input = location(&a.input, &config, false).await?;
    let keys = location(&a.keys, &config, false).await?;
    // the other files it reads: the output may not be one of them either (SPEC §8)
    let mut also_read = Vec::new();
    for (role, file) in [
        ("--contract", Some(&a.contract)),
        ("--seed-file", a.seed_file.as_ref()),
    ] {
        if let Some(f) = file
            && let Ok(real) = std::fs::canonicalize(f)
        {
            also_read.push(keylink_core::safety::Place {
                role: role.into(),
                location: keylink_core::connector::ObjectLocation::new(
                    "file",
                    "",
                    real.to_string_lossy(),
                ),
            });
        }
    }
    let output = location(&a.output, &config, true).await?;
    let summary = keylink_core::decrypt::decrypt(
        &request,
        &input,
        &keys,
        &output,
        &also_read,
        format,
        csv.as_ref(),
    )
    .await
    .context("decrypt failed; no output was written")?;
    if a.json {
        output::print(&(serde_json::to_string_pretty(&summary)? + "\n"));
    } else {
        output::print(&output::decrypt_text(&summary));
    }
    let rejected: u64 = summary.input.rejects.values().map(|r| r.count).sum();
    Ok(if rejected > 0 { 1 } else { 0 })
}

/// `keylink run --watch`: prepares the job once, then watches until SIGINT/SIGTERM (exit 0).
async fn watch_job(
    job_file: &Path,
    common: &Common,
    json: bool,
    parallelism: Option<usize>,
    w: &WatchArgs,
) -> Result<u8> {
    use keylink_core::watch::{WatchEvent, WatchOptions, WatchState};
    if w.interval == 0 {
        anyhow::bail!("--interval must be at least 1 second");
    }
    // before anything else: a stop during start-up still ends the watcher cleanly
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    on_shutdown_signal(stop_tx)?;
    let prepared = prepare(job_file, common, Mode::Watch).await?;
    let state_path = w.state.clone().unwrap_or_else(|| default_state(job_file));
    let mut state = WatchState::open(&state_path)?;
    let mut opts = WatchOptions {
        interval: std::time::Duration::from_secs(w.interval),
        max_attempts: w.max_attempts.max(1),
        ..WatchOptions::default()
    };
    if let Some(p) = parallelism {
        opts.run.parallelism = p.max(1);
    }
    let report = move |e: &WatchEvent| {
        if json {
            if let Ok(line) = serde_json::to_string(e) {
                output::print(&(line + "\n"));
            }
        } else {
            output::print(&output::watch_event_text(e));
        }
    };
    keylink_core::watch::watch(&prepared, &opts, &mut state, stop_rx, &report).await?;
    Ok(0)
}

/// Registers SIGINT and SIGTERM handlers now (a signal from this moment on is caught: a
/// supervisor may stop a watcher right after it started) and sends `true` on `stop` when one
/// arrives.
fn on_shutdown_signal(stop: tokio::sync::watch::Sender<bool>) -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = stop.send(true);
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    Ok(())
}

/// The shard of `JOB_COMPLETION_INDEX` and `KEYLINK_SHARDS` (a Kubernetes Indexed Job).
fn shard_from_env() -> Result<Option<keylink_core::shard::Shard>> {
    Ok(keylink_core::shard::Shard::from_env(|k| {
        std::env::var(k).ok()
    })?)
}

/// Loads a job and its config and prepares it (every configuration error is reported here).
/// Loads and checks a job, building nothing (validate, finalize).
async fn check(job_file: &Path, common: &Common) -> Result<(engine::CheckedJob, Config)> {
    let (job, config) = load(job_file, common)?;
    let checked = engine::check(
        &job,
        job_file,
        &config,
        common.contract.as_deref(),
        Mode::Run,
    )
    .await?;
    Ok((checked, config))
}

async fn prepare(job_file: &Path, common: &Common, mode: Mode) -> Result<engine::PreparedJob> {
    let (job, config) = load(job_file, common)?;
    Ok(engine::prepare(&job, job_file, &config, common.contract.as_deref(), mode).await?)
}

/// Loads, prepares and runs a job.
async fn run_job(
    job_file: &Path,
    common: &Common,
    parallelism: Option<usize>,
    shard: Option<keylink_core::shard::Shard>,
    progress: Option<Arc<dyn engine::Progress>>,
) -> Result<keylink_core::summary::JobSummary> {
    let mut prepared = prepare(job_file, common, Mode::Run).await?;
    if let Some(shard) = shard {
        prepared = prepared.with_shard(shard)?;
    }
    let mut opts = RunOptions {
        progress,
        ..RunOptions::default()
    };
    if let Some(p) = parallelism {
        opts.parallelism = p.max(1);
    }
    prepared
        .run(opts)
        .await
        .with_context(|| format!("job {} failed; no output was written", job_file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keylink_core::{ConnectorConfig, FormatConfig, KeyStoreConfig};

    /// Every registered component's example must deserialize as that component: catches a
    /// plugin crate whose typetag registration was dropped, or a description whose example is
    /// wrong. And no two crates claim one tag.
    #[test]
    fn every_registered_component_deserializes() {
        use keylink_core::registry::{Kind, components, duplicates};
        let all = components();
        for kind in [Kind::Connector, Kind::Format, Kind::KeyStore] {
            assert!(all.iter().any(|c| c.kind == kind), "no {kind} registered");
        }
        for c in &all {
            let ok = match c.kind {
                Kind::Connector => serde_json::from_str::<Box<dyn ConnectorConfig>>(c.example)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Kind::Format => serde_json::from_str::<Box<dyn FormatConfig>>(c.example)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Kind::KeyStore => serde_json::from_str::<Box<dyn KeyStoreConfig>>(c.example)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            assert!(ok.is_ok(), "{} {}: {:?}", c.kind, c.name, ok.err());
            assert_eq!(c.schemes.is_empty(), c.from_url.is_none(), "{}", c.name);
        }
        assert!(duplicates().is_empty(), "{:?}", duplicates());
        // and an unknown tag is an error that names it
        let e = serde_json::from_str::<Box<dyn ConnectorConfig>>(r#"{"type":"ftp"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ftp"), "{e}");
    }

    #[test]
    fn version_lists_components() {
        let v = version_text();
        for c in keylink_core::registry::components() {
            assert!(v.contains(c.name), "{v}");
        }
        // the features of this build
        for (feature, name) in [
            (cfg!(feature = "local"), "local"),
            (cfg!(feature = "s3"), "s3"),
            (cfg!(feature = "gcs"), "gcs"),
            (cfg!(feature = "azure"), "azure"),
            (cfg!(feature = "csv"), "csv"),
            (cfg!(feature = "jsonl"), "jsonl"),
            (cfg!(feature = "postgres"), "postgres"),
            (true, "embedded"),
        ] {
            assert_eq!(v.contains(name), feature, "{name} in {v}");
        }
    }
}
