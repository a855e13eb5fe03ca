//! `keylink subjects …` and `keylink keys …`: data subjects, key statistics, exports, retention,
//! master key rotation and the audit log, from the command line (SPEC §9).
//!
//! Every command works through the [`KeyStore`] trait, so it works on every store that supports
//! it. Subject ids are hashed with the store's lookup key as soon as they are read; only hashes
//! are printed (receipts, listings), never an id.

use std::io::{BufRead, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use keylink_core::Bytes;
use keylink_core::connector::BuildContext;
use keylink_core::job::Config;
use keylink_core::keys_export::KeysWriter;
use keylink_core::keystore::envelope::{MASTER_KEY_ENV, MasterKey};
use keylink_core::keystore::{
    AuditEntry, AuditOperation, Forgotten, KeyStore, SubjectHash, audit_best_effort, now_ms,
};
use serde_json::json;
use zeroize::Zeroizing;

use crate::output;

/// What every receipt says about keys that left keylink before.
pub const EXPORTED_KEYS_NOTE: &str = "Keys exported earlier (keys CSV files written by jobs or by \
`keylink keys export`) are outside keylink's reach: delete those copies too, or the data they \
protect stays readable with them.";

/// `keylink subjects …`
#[derive(Debug, clap::Subcommand)]
pub enum SubjectsCommand {
    /// A person's keyLinks, with window, group and policy.
    Keylinks {
        #[command(flatten)]
        ids: Ids,
        #[command(flatten)]
        common: StoreArgs,
    },
    /// Subject hashes with their key counts.
    List {
        #[command(flatten)]
        common: StoreArgs,
    },
    /// Delete every key linked to a person (crypto-shredding) and print a receipt.
    Forget {
        #[command(flatten)]
        ids: Ids,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        common: StoreArgs,
    },
}

/// `keylink keys …`
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Keys per group, window (day) and policy.
    Stats {
        #[command(flatten)]
        common: StoreArgs,
    },
    /// Export a key group's keys as the keys CSV (keyLink,encryptionKey,policyId,expiresAt).
    Export {
        /// The key group (the jobs' batch_job_group_id).
        #[arg(long)]
        group: String,
        /// Only keys created at or after this instant (RFC 3339, YYYY-MM-DD, or epoch ms).
        #[arg(long)]
        since: Option<String>,
        /// Where the CSV goes: a local path, NAME:PATH for a connector of the config file, or
        /// scheme://bucket/path. Created with mode 0600 on local disk.
        #[arg(long)]
        output: String,
        #[command(flatten)]
        common: StoreArgs,
    },
    /// Delete keys past their expiresAt (retention).
    Purge {
        /// Purge the expired keys (the only kind of purge there is; required so a purge is
        /// never typed by accident).
        #[arg(long, required = true)]
        expired: bool,
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// The instant to purge at instead of now (tests; RFC 3339, YYYY-MM-DD or epoch ms).
        #[arg(long, hide = true)]
        now: Option<String>,
        #[command(flatten)]
        common: StoreArgs,
    },
    /// Print the key store's audit log.
    Audit {
        #[command(flatten)]
        common: StoreArgs,
    },
    /// Re-wrap every key under a new master key (crash-safe: rerun it after an interruption),
    /// then switch the master key file to the new key.
    RotateMaster {
        /// A file holding the new master key (base64 of 32 bytes).
        #[arg(long)]
        new_key_file: PathBuf,
        #[command(flatten)]
        common: StoreArgs,
    },
}

/// Where the subject ids come from. Ids are read from a file or stdin rather than the command
/// line where possible, so they need not appear in shell history.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = true)]
pub struct Ids {
    /// A subject id (repeatable). Prefer --id-file or `-`: a command line stays in shell history.
    #[arg(long = "id")]
    id: Vec<String>,
    /// A file with one subject id per line.
    #[arg(long)]
    id_file: Option<PathBuf>,
    /// `-`: read ids from stdin, one per line.
    #[arg(value_name = "-", value_parser = clap::builder::PossibleValuesParser::new(["-"]))]
    stdin: Option<String>,
}

/// The options every lifecycle command takes.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The config file (its key_store and policies). Default: keylink.yaml in the current
    /// directory; without one, the embedded store ./keylink-keys.db.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `keylink subjects …`.
pub async fn subjects(cmd: SubjectsCommand) -> Result<u8> {
    match cmd {
        SubjectsCommand::Keylinks { ids, common } => {
            let (_, store) = open(&common).await?;
            let hashes = read_ids(&ids, store.as_ref())?;
            let mut out = Vec::new();
            for h in &hashes {
                let keys = store.subject_keys(h).await?;
                out.push((h, keys));
            }
            if common.json {
                let v: Vec<_> = out
                    .iter()
                    .map(|(h, keys)| {
                        json!({
                            "subject_hash": h.to_hex(),
                            "keys": keys.iter().map(|k| json!({
                                "key_link": k.key_link.to_string(),
                                "window_start": utc(k.window_start_ms),
                                "group": k.group,
                                "policy_id": k.policy_id,
                                "expires_at": utc(k.expires_at_ms),
                                "created_at": utc(k.created_at_ms),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                output::print(&(serde_json::to_string_pretty(&v)? + "\n"));
            } else {
                let mut t = String::new();
                for (h, keys) in &out {
                    t.push_str(&format!("subject {} — {} keys\n", h.to_hex(), keys.len()));
                    for k in keys {
                        t.push_str(&format!(
                            "  {}  window {}  group {}  policy {}  expires {}\n",
                            k.key_link,
                            day(k.window_start_ms),
                            k.group.as_deref().unwrap_or("?"),
                            k.policy_id.as_deref().map_or("?", none_if_empty),
                            day(k.expires_at_ms),
                        ));
                    }
                }
                output::print(&t);
            }
            Ok(0)
        }
        SubjectsCommand::List { common } => {
            let (_, store) = open(&common).await?;
            let subjects = store.list_subjects().await?;
            if common.json {
                let v: Vec<_> = subjects
                    .iter()
                    .map(|s| json!({"subject_hash": s.subject.to_hex(), "keys": s.keys}))
                    .collect();
                output::print(&(serde_json::to_string_pretty(&v)? + "\n"));
            } else {
                let mut t = format!("{} subjects\n", subjects.len());
                for s in &subjects {
                    t.push_str(&format!("{}  {} keys\n", s.subject.to_hex(), s.keys));
                }
                output::print(&t);
            }
            Ok(0)
        }
        SubjectsCommand::Forget { ids, yes, common } => {
            let (_, store) = open(&common).await?;
            let hashes = read_ids(&ids, store.as_ref())?;
            if !yes {
                let mut keys = 0;
                for h in &hashes {
                    keys += store.subject_keys(h).await?.len();
                }
                confirm(
                    &format!(
                        "Forget {} subject(s)? This destroys {keys} key(s) for good: every record \
                         encrypted under them becomes unreadable, for these subjects and for \
                         anyone sharing their keys.",
                        hashes.len()
                    ),
                    ids.stdin.is_some(),
                )?;
            }
            let mut receipts = Vec::new();
            for h in &hashes {
                receipts.push(store.forget(h).await?);
            }
            if common.json {
                let v: Vec<_> = receipts.iter().map(receipt_json).collect();
                output::print(&(serde_json::to_string_pretty(&v)? + "\n"));
            } else {
                let mut t = String::new();
                for r in &receipts {
                    t.push_str(&receipt_text(r));
                }
                t.push_str(EXPORTED_KEYS_NOTE);
                t.push('\n');
                output::print(&t);
            }
            Ok(0)
        }
    }
}

/// Runs `keylink keys …`.
pub async fn keys(cmd: KeysCommand) -> Result<u8> {
    match cmd {
        KeysCommand::Stats { common } => {
            let (_, store) = open(&common).await?;
            let stats = store.key_stats().await?;
            if common.json {
                let v: Vec<_> = stats
                    .iter()
                    .map(|s| {
                        json!({
                            "group": s.group,
                            "window_start": utc(s.window_start_ms),
                            "policy_id": s.policy_id,
                            "keys": s.keys,
                            "earliest_expiry": utc(s.earliest_expiry_ms),
                        })
                    })
                    .collect();
                output::print(&(serde_json::to_string_pretty(&v)? + "\n"));
            } else {
                let total: u64 = stats.iter().map(|s| s.keys).sum();
                let mut t = format!(
                    "{total} keys in {}\n{:<24} {:<10} {:<12} {:>8}  earliest expiry\n",
                    store.describe(),
                    "group",
                    "window",
                    "policy",
                    "keys"
                );
                for s in &stats {
                    t.push_str(&format!(
                        "{:<24} {:<10} {:<12} {:>8}  {}\n",
                        s.group.as_deref().unwrap_or("?"),
                        day(s.window_start_ms),
                        s.policy_id.as_deref().map_or("?", none_if_empty),
                        s.keys,
                        day(s.earliest_expiry_ms)
                    ));
                }
                output::print(&t);
            }
            Ok(0)
        }
        KeysCommand::Export {
            group,
            since,
            output: out,
            common,
        } => {
            let mut writer = KeysWriter::csv()?;
            let (config, store) = open(&common).await?;
            let since_ms = since.as_deref().map(parse_instant).transpose()?;
            let keys = store
                .export_keys(&store.lookup_key().group_hash(&group), since_ms)
                .await?;
            let target = crate::location(&out, &config, true).await?;
            refuse_store_files(&config, &target.id, &out)?;
            let sink = target.sink.as_ref().context("no sink for the output")?;
            let shown = sink.describe(&target.path);
            let mut bytes = Vec::with_capacity(64 + keys.len() * 300);
            writer.begin(&mut bytes)?;
            for k in &keys {
                writer.write(&k.key, &k.policy_id, &mut bytes)?;
            }
            let mut w = sink.create_private(&target.path).await?;
            let written = async {
                w.write(Bytes::from(bytes)).await?;
                w.finish().await
            }
            .await;
            match written {
                Ok(()) => w.commit().await?,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e.into());
                }
            }
            audit_best_effort(
                store.as_ref(),
                &AuditEntry {
                    at_ms: now_ms(),
                    operation: AuditOperation::Exported,
                    keys: keys.len() as u64,
                    subject: None,
                    group: Some(group.clone()),
                    detail: format!("to {shown}"),
                },
            )
            .await;
            if common.json {
                output::print(
                    &(serde_json::to_string_pretty(
                        &json!({"group": group, "keys": keys.len(), "output": shown}),
                    )? + "\n"),
                );
            } else {
                output::print(&format!(
                    "exported {} keys of group {group} to {shown}\n",
                    keys.len()
                ));
            }
            Ok(0)
        }
        KeysCommand::Purge {
            expired: _,
            dry_run,
            now,
            common,
        } => {
            let (_, store) = open(&common).await?;
            let at = match &now {
                Some(t) => parse_instant(t)?,
                None => now_ms(),
            };
            let n = if dry_run {
                store.count_expired(at).await?
            } else {
                store.purge_expired(at).await?
            };
            if common.json {
                output::print(
                    &(serde_json::to_string_pretty(&json!({
                        "dry_run": dry_run,
                        "expired_before": utc(at),
                        "keys": n,
                    }))? + "\n"),
                );
            } else if dry_run {
                output::print(&format!(
                    "{n} keys expired before {} would be purged (dry run: nothing deleted)\n",
                    utc(at)
                ));
            } else {
                output::print(&format!("purged {n} keys expired before {}\n", utc(at)));
            }
            Ok(0)
        }
        KeysCommand::Audit { common } => {
            let (_, store) = open(&common).await?;
            let log = store.audit_log().await?;
            if common.json {
                let mut t = String::new();
                for e in &log {
                    t.push_str(&serde_json::to_string(&audit_json(e))?);
                    t.push('\n');
                }
                output::print(&t);
            } else {
                let mut t = String::new();
                for e in &log {
                    t.push_str(&format!(
                        "{}  {:<9} {:>8} keys",
                        utc(e.at_ms),
                        e.operation.as_str(),
                        e.keys
                    ));
                    if let Some(s) = &e.subject {
                        t.push_str(&format!("  subject {}", s.to_hex()));
                    }
                    if let Some(g) = &e.group {
                        t.push_str(&format!("  group {g}"));
                    }
                    if !e.detail.is_empty() {
                        t.push_str(&format!("  {}", e.detail));
                    }
                    t.push('\n');
                }
                output::print(&t);
            }
            Ok(0)
        }
        KeysCommand::RotateMaster {
            new_key_file,
            common,
        } => rotate_master(&new_key_file, &common).await,
    }
}

/// Loads the config: `--config`, else `keylink.yaml` in the current directory, else an empty
/// one; the embedded store when it names none (like `keylink run`).
fn load_config(common: &StoreArgs) -> Result<Config> {
    let file = match &common.config {
        Some(c) => Some(c.clone()),
        None => ["keylink.yaml", "keylink.yml"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    let mut config = match &file {
        Some(c) => Config::from_file(c)?,
        None => Config::empty(PathBuf::from(".")),
    };
    if config.key_store.is_none() {
        config.key_store = Some(Box::new(
            keylink_keystore_embedded::EmbeddedKeyStoreConfig::default(),
        ));
    }
    Ok(config)
}

async fn open(common: &StoreArgs) -> Result<(Config, Arc<dyn KeyStore>)> {
    let config = load_config(common)?;
    let store = build_store(&config, None).await?;
    Ok((config, store))
}

/// Opens the configured store; with `master_key_file`, with that key file instead of the
/// configured one.
async fn build_store(config: &Config, master_key_file: Option<&Path>) -> Result<Arc<dyn KeyStore>> {
    let ks = config
        .key_store
        .as_ref()
        .context("no key store configured")?;
    let ctx = BuildContext {
        base_dir: config.base_dir.clone(),
    };
    let store = match master_key_file {
        None => ks.build(&ctx).await,
        Some(file) => {
            let mut json = serde_json::to_value(ks)?;
            json["master_key_file"] = json!(std::path::absolute(file)?);
            let other: Box<dyn keylink_core::KeyStoreConfig> = serde_json::from_value(json)?;
            other.build(&ctx).await
        }
    };
    Ok(store.map_err(|e| e.context("key_store"))?)
}

/// The master key file the configured store reads (none when the store has no file setting).
fn configured_key_file(config: &Config) -> Result<Option<PathBuf>> {
    let ks = config
        .key_store
        .as_ref()
        .context("no key store configured")?;
    let json = serde_json::to_value(ks)?;
    if let Some(f) = json.get("master_key_file").and_then(|f| f.as_str()) {
        return Ok(Some(config.resolve(Path::new(f))));
    }
    if json["type"] == "embedded" {
        let path = json["path"].as_str().unwrap_or("keylink-keys.db");
        return Ok(Some(keylink_keystore_embedded::default_master_key_file(
            &config.resolve(Path::new(path)),
        )));
    }
    Ok(None)
}

/// Fails closed (SPEC §8) when an export would replace the key store's own files (the database,
/// its journals, the master key file): that would destroy every key.
fn refuse_store_files(
    config: &Config,
    target: &keylink_core::connector::ObjectLocation,
    spec: &str,
) -> Result<()> {
    if target.store != "file" {
        return Ok(());
    }
    let mut protected: Vec<PathBuf> = configured_key_file(config)?.into_iter().collect();
    if let Some(ks) = &config.key_store {
        let json = serde_json::to_value(ks)?;
        if json["type"] == "embedded" {
            let db = config.resolve(Path::new(
                json["path"].as_str().unwrap_or("keylink-keys.db"),
            ));
            for suffix in ["", "-wal", "-journal", "-shm"] {
                let mut name = db.as_os_str().to_owned();
                name.push(suffix);
                protected.push(PathBuf::from(name));
            }
        }
    }
    let out = Path::new(&target.key);
    for p in &protected {
        let same = std::fs::canonicalize(p)
            .ok()
            .or_else(|| std::path::absolute(p).ok())
            .is_some_and(|c| c == out);
        if same {
            bail!(
                "--output {spec} is the key store's file {}: refusing to replace it (that would \
                 destroy every key); nothing was written",
                p.display()
            );
        }
    }
    Ok(())
}

/// `keylink keys rotate-master`: re-wraps the store (the store's own crash-safe rotation), and
/// only then switches the master key file to the new key, atomically. Interrupted before the
/// switch, a rerun opens the store with the old key (the rotation resumes) or, if the store had
/// finished, with the new one, and then switches the file.
async fn rotate_master(new_key_file: &Path, common: &StoreArgs) -> Result<u8> {
    let config = load_config(common)?;
    let text = Zeroizing::new(std::fs::read_to_string(new_key_file).with_context(|| {
        format!(
            "cannot read the new master key file {}",
            new_key_file.display()
        )
    })?);
    let what = format!("the new master key file {}", new_key_file.display());
    let new = MasterKey::from_base64(&text, &what)?;
    let key_file = configured_key_file(&config)?;
    let from_env = std::env::var_os(MASTER_KEY_ENV).is_some();
    if let Some(f) = &key_file
        && !from_env
        && std::fs::canonicalize(f).ok() == std::fs::canonicalize(new_key_file).ok()
    {
        bail!(
            "{} is the store's current master key file: write the new key to another file",
            new_key_file.display()
        );
    }
    let store = match build_store(&config, None).await {
        Ok(store) => store,
        Err(first) => {
            // A rotation that finished in the store but not in the key file: the new key opens it.
            match build_store(&config, Some(new_key_file)).await {
                Ok(store) if !from_env => store,
                _ => return Err(first),
            }
        }
    };
    let report = store.rotate_master(&new).await?;
    let mut t = if report.already_done {
        format!("{} is already under the new master key\n", store.describe())
    } else {
        format!(
            "re-wrapped {} keys of {} under the new master key{}\n",
            report.rewrapped,
            store.describe(),
            if report.resumed {
                " (finished an interrupted rotation)"
            } else {
                ""
            }
        )
    };
    if from_env {
        t.push_str(&format!(
            "{MASTER_KEY_ENV} still holds the old master key, which opens nothing in this store \
             now: set it to the new key (from {}) everywhere keylink runs\n",
            new_key_file.display()
        ));
    } else if let Some(f) = &key_file {
        replace_file(f, text.as_bytes())
            .with_context(|| format!("cannot switch the master key file {}", f.display()))?;
        t.push_str(&format!(
            "the master key file {} now holds the new key; the old key opens nothing in this \
             store (give every worker the new key)\n",
            f.display()
        ));
    } else {
        t.push_str(
            "no master key file is configured: give every worker the new key; the old one opens \
             nothing in this store now\n",
        );
    }
    if common.json {
        output::print(
            &(serde_json::to_string_pretty(&json!({
                "rewrapped": report.rewrapped,
                "resumed": report.resumed,
                "already_done": report.already_done,
            }))? + "\n"),
        );
    } else {
        output::print(&t);
    }
    Ok(0)
}

/// Replaces `file` with `content` atomically: a private temporary file in the same folder,
/// synced, renamed over it, the folder synced. A kill leaves the old file or the new one.
fn replace_file(file: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut suffix = [0u8; 8];
    keylink_core::crypto::fill_random(&mut suffix).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:016x}",
        file.file_name().unwrap_or_default().to_string_lossy(),
        u64::from_ne_bytes(suffix)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        #[cfg(unix)]
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads the ids and hashes them at once; the ids themselves are dropped here.
fn read_ids(ids: &Ids, store: &dyn KeyStore) -> Result<Vec<SubjectHash>> {
    let lookup = store.lookup_key();
    let mut out = Vec::new();
    let mut add = |id: &str| {
        let id = id.trim_end_matches(['\r', '\n']);
        if !id.is_empty() {
            let h = lookup.subject_hash(id.as_bytes());
            if !out.contains(&h) {
                out.push(h);
            }
        }
    };
    for id in &ids.id {
        add(id);
    }
    let lines = |r: &mut dyn BufRead, what: &str, add: &mut dyn FnMut(&str)| -> Result<()> {
        let mut line = Zeroizing::new(String::new());
        loop {
            line.clear();
            // the error names the source only: a line may be personal data
            let n = r
                .read_line(&mut line)
                .with_context(|| format!("cannot read subject ids from {what}"))?;
            if n == 0 {
                return Ok(());
            }
            add(&line);
        }
    };
    if let Some(f) = &ids.id_file {
        let file = std::fs::File::open(f)
            .with_context(|| format!("cannot open the id file {}", f.display()))?;
        lines(
            &mut std::io::BufReader::new(file),
            &f.display().to_string(),
            &mut add,
        )?;
    }
    if ids.stdin.is_some() {
        lines(&mut std::io::stdin().lock(), "stdin", &mut add)?;
    }
    if out.is_empty() {
        bail!("no subject ids given (--id, --id-file or - for stdin)");
    }
    Ok(out)
}

/// Asks on the terminal; refuses when there is none (or stdin carried the ids).
fn confirm(question: &str, stdin_used: bool) -> Result<()> {
    if stdin_used || !std::io::stdin().is_terminal() {
        bail!("{question}\nrefusing without confirmation: run again with --yes");
    }
    eprint!("{question}\nType 'yes' to go on: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed: nothing was forgotten");
    }
    Ok(())
}

fn receipt_json(r: &Forgotten) -> serde_json::Value {
    json!({
        "subject_hash": r.subject.to_hex(),
        "keys_destroyed": r.key_links.len(),
        "key_links": r.key_links.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        "forgotten_at": utc(r.at_ms),
        "note": EXPORTED_KEYS_NOTE,
    })
}

fn receipt_text(r: &Forgotten) -> String {
    let mut t = format!(
        "ERASURE RECEIPT\n  subject hash   {}\n  keys destroyed {}\n  time (UTC)     {}\n",
        r.subject.to_hex(),
        r.key_links.len(),
        utc(r.at_ms)
    );
    for l in &r.key_links {
        t.push_str(&format!("  key link       {l}\n"));
    }
    t
}

fn audit_json(e: &AuditEntry) -> serde_json::Value {
    json!({
        "at": utc(e.at_ms),
        "operation": e.operation.as_str(),
        "keys": e.keys,
        "subject_hash": e.subject.map(|s| s.to_hex()),
        "group": e.group,
        "detail": e.detail,
    })
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

/// RFC 3339 in UTC with milliseconds.
fn utc(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// The UTC day.
fn day(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// An instant: RFC 3339, a UTC day (`2024-03-01`), or epoch milliseconds.
fn parse_instant(text: &str) -> Result<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis());
    }
    bail!(
        "{text:?} is not an instant: use RFC 3339 (2024-03-01T00:00:00Z), a day (2024-03-01) or epoch milliseconds"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse() {
        assert_eq!(parse_instant("86400000").unwrap(), 86_400_000);
        assert_eq!(parse_instant("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(
            parse_instant("1970-01-02T01:00:00+01:00").unwrap(),
            86_400_000
        );
        assert!(parse_instant("yesterday").is_err());
        assert_eq!(utc(86_400_000), "1970-01-02T00:00:00.000Z");
    }
}
