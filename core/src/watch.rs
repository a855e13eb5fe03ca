//! `keylink run --watch`: batch jobs that run as files land (SPEC §12).
//!
//! Every interval the watcher lists the job's source (prefix + glob) and processes each object it
//! has not processed before — oldest path first, one at a time, each as its own all-or-nothing
//! unit ([`PreparedJob::run_object`]) whose outputs are named after it (`{input}`).
//!
//! What was processed is kept in a [`WatchState`]: an append-only JSON Lines file with one entry
//! per attempt, written (and `fsync`ed) *after* the object's outputs are committed. A crash between
//! the commit and the entry is harmless: the object is processed again, and because a watch job
//! has a fixed key group, the second run finds the same keys and rewrites the same bytes under
//! the same names. An object whose size or version (ETag, modification time) changed is processed
//! again. An object that fails as a whole (not CSV at all, a header without a contract field, an
//! unreadable object) is recorded as failed with the reason and retried on later intervals, at
//! most [`WatchOptions::max_attempts`] times; bad records are not failures (they are counted
//! rejects, as in any run).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::connector::{ObjectMeta, select_objects};
use crate::engine::{PreparedJob, RunOptions};
use crate::error::{Error, ErrorKind, Result};

/// How a watcher runs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Time between two listings of the source.
    pub interval: Duration,
    /// How often an object that fails as a whole is tried before the watcher gives up on it
    /// (until it changes).
    pub max_attempts: u32,
    /// Options of each object's run.
    pub run: RunOptions,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            interval: Duration::from_secs(60),
            max_attempts: 3,
            run: RunOptions::default(),
        }
    }
}

/// The outcome of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its outputs are committed (it may have had rejected records).
    Done,
    /// It failed as a whole; it is tried again on a later interval.
    Failed,
}

/// The record of one object: its last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The object's path in the source.
    pub path: String,
    /// Its size when processed.
    pub size: Option<u64>,
    /// Its version (ETag, modification time) when processed.
    pub version: Option<String>,
    /// Done or failed.
    pub status: Status,
    /// When, UTC (RFC 3339).
    pub at: String,
    /// Attempts since the object last changed.
    pub attempts: u32,
    /// Records read.
    pub rows_read: u64,
    /// Records accepted.
    pub rows_accepted: u64,
    /// Records rejected.
    pub rows_rejected: u64,
    /// The objects written.
    pub outputs: Vec<String>,
    /// Why it failed (names files and settings, never record values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Entry {
    fn same_object(&self, o: &ObjectMeta) -> bool {
        self.size == o.size && self.version == o.version
    }
}

/// What to do with a listed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Processed already (or given up on) and unchanged.
    Skip,
    /// Process it; this is attempt number `n` (1-based) since it last changed.
    Process(u32),
}

/// The durable record of what a watcher processed (see the module docs). One watcher at a time
/// may hold a state file: it is locked while open.
#[derive(Debug)]
pub struct WatchState {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    log: File,
    lines: usize,
    _lock: File,
}

impl WatchState {
    /// Opens (or creates) the state file at `path`, locking it against a second watcher.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |op: &str, e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("watch state {}: cannot {op}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io("create its folder", e))?;
        }
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("open its lock file", e))?;
        lock.try_lock().map_err(|_| {
            Error::config(format!(
                "watch state {}: another watcher of this job is running (its lock file {} is \
                 held)",
                path.display(),
                lock_path.display()
            ))
        })?;
        let (entries, lines) = read_entries(path)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io("open", e))?;
        let mut state = WatchState {
            path: path.to_path_buf(),
            entries,
            log,
            lines,
            _lock: lock,
        };
        // a torn last line (a crash mid-append) or a long history: rewrite it whole
        if state.lines != state.entries.len() {
            state.compact()?;
        }
        Ok(state)
    }

    /// Reads a state file without locking it (for `keylink watch-status`).
    pub fn read(path: &Path) -> Result<Vec<Entry>> {
        Ok(read_entries(path)?.0.into_values().collect())
    }

    /// The entries, by path.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// What to do with a listed object.
    pub fn decide(&self, o: &ObjectMeta, max_attempts: u32) -> Decision {
        match self.entries.get(&o.path) {
            None => Decision::Process(1),
            Some(e) if !e.same_object(o) => Decision::Process(1),
            Some(e) if e.status == Status::Done => Decision::Skip,
            Some(e) if e.attempts >= max_attempts => Decision::Skip,
            Some(e) => Decision::Process(e.attempts + 1),
        }
    }

    /// Records an attempt durably (appended and `fsync`ed before this returns).
    pub fn record(&mut self, entry: Entry) -> Result<()> {
        let mut line = serde_json::to_vec(&entry)
            .map_err(|e| Error::new(ErrorKind::Other, format!("watch state: {e}")))?;
        line.push(b'\n');
        self.log
            .write_all(&line)
            .and_then(|()| self.log.sync_data())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("watch state {}: cannot append: {e}", self.path.display()),
                )
            })?;
        self.lines += 1;
        self.entries.insert(entry.path.clone(), entry);
        if self.lines > 2 * self.entries.len() + 1000 {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with one line per object: a temporary file, `fsync`, rename.
    fn compact(&mut self) -> Result<()> {
        let io = |op: &str, e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("watch state {}: cannot {op}: {e}", self.path.display()),
            )
        };
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut f = File::create(&tmp).map_err(|e| io("write", e))?;
        for e in self.entries.values() {
            let mut line = serde_json::to_vec(e)
                .map_err(|e| Error::new(ErrorKind::Other, format!("watch state: {e}")))?;
            line.push(b'\n');
            f.write_all(&line).map_err(|e| io("write", e))?;
        }
        f.sync_all().map_err(|e| io("write", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.log = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| io("open", e))?;
        self.lines = self.entries.len();
        Ok(())
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// The last entry per path, and the number of lines read. A line that does not parse ends the
/// file (a torn append); a bad line before good ones is corruption and an error.
fn read_entries(path: &Path) -> Result<(BTreeMap<String, Entry>, usize)> {
    let mut entries = BTreeMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((entries, 0)),
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Io,
                format!("watch state {}: cannot read: {e}", path.display()),
            ));
        }
    };
    let mut lines = 0;
    let mut torn: Option<usize> = None;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("watch state {}: cannot read: {e}", path.display()),
            )
        })?;
        if line.is_empty() {
            continue;
        }
        if let Some(t) = torn {
            return Err(Error::data(format!(
                "watch state {}: line {} is not a state entry; the file is damaged (move it \
                 away to process every object again)",
                path.display(),
                t + 1
            )));
        }
        match serde_json::from_slice::<Entry>(&line) {
            Ok(e) => {
                lines += 1;
                entries.insert(e.path.clone(), e);
            }
            Err(_) => torn = Some(i),
        }
    }
    if torn.is_some() {
        lines += 1; // forces a rewrite without it
    }
    Ok((entries, lines))
}

/// What a watcher reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// The watcher started.
    Started {
        /// The job file.
        job: String,
        /// The state file.
        state: String,
        /// Objects already recorded.
        known: usize,
    },
    /// One object was processed (or failed).
    Object {
        /// Its record.
        #[serde(flatten)]
        entry: Entry,
        /// Wall time, seconds.
        seconds: f64,
    },
    /// An interval ended.
    Interval {
        /// Objects the source selects.
        listed: usize,
        /// Processed in this interval.
        processed: usize,
        /// Failed in this interval.
        failed: usize,
        /// Failed objects given up on until they change.
        given_up: usize,
    },
    /// Listing the source failed; the watcher tries again next interval.
    ListingFailed {
        /// Why.
        reason: String,
    },
    /// The watcher stopped (a signal).
    Stopped,
}

/// Runs `job` as a watcher until `stop` turns true: between objects, the current object is
/// always finished. Returns when stopped; errors only for what no later interval can fix (the
/// state file).
pub async fn watch(
    job: &PreparedJob,
    opts: &WatchOptions,
    state: &mut WatchState,
    mut stop: tokio::sync::watch::Receiver<bool>,
    report: &(dyn Fn(&WatchEvent) + Send + Sync),
) -> Result<()> {
    if !job.per_input() {
        return Err(Error::config(format!(
            "{}: a watch job needs {{input}} in every target's file_name, so that the outputs \
             of different inputs never collide (e.g. \"file_name\": \"{{input}}-encrypted.csv\")",
            job.job_file
        )));
    }
    if !job.fixed_group {
        return Err(Error::config(format!(
            "{}: a watch job needs encryption.batch_job_group_id, so that reprocessing an object \
             after a crash rewrites the same bytes under the same names",
            job.job_file
        )));
    }
    report(&WatchEvent::Started {
        job: job.job_file.clone(),
        state: state.path.display().to_string(),
        known: state.entries.len(),
    });
    loop {
        if *stop.borrow() {
            break;
        }
        let listed = select_objects(
            job.source.as_ref(),
            &job.source_prefix,
            job.source_glob.as_deref(),
        )
        .await;
        match listed {
            Err(e) => report(&WatchEvent::ListingFailed {
                reason: e.to_string(),
            }),
            Ok(objects) => {
                let (mut processed, mut failed) = (0, 0);
                for o in &objects {
                    if *stop.borrow() {
                        break;
                    }
                    let Decision::Process(attempt) = state.decide(o, opts.max_attempts) else {
                        continue;
                    };
                    let started = Instant::now();
                    let entry = match job.run_object(o, &opts.run).await {
                        Ok(s) => {
                            processed += 1;
                            Entry {
                                path: o.path.clone(),
                                size: o.size,
                                version: o.version.clone(),
                                status: Status::Done,
                                at: now(),
                                attempts: attempt,
                                rows_read: s.rows_read,
                                rows_accepted: s.rows_accepted,
                                rows_rejected: s.rows_rejected,
                                outputs: s.outputs.iter().map(|o| o.object.clone()).collect(),
                                reason: None,
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(object = %job.source.describe(&o.path), attempt,
                                error = %e, "object failed; it is tried again later");
                            Entry {
                                path: o.path.clone(),
                                size: o.size,
                                version: o.version.clone(),
                                status: Status::Failed,
                                at: now(),
                                attempts: attempt,
                                rows_read: 0,
                                rows_accepted: 0,
                                rows_rejected: 0,
                                outputs: Vec::new(),
                                reason: Some(e.to_string()),
                            }
                        }
                    };
                    state.record(entry.clone())?;
                    report(&WatchEvent::Object {
                        entry,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                }
                let given_up = state
                    .entries
                    .values()
                    .filter(|e| e.status == Status::Failed && e.attempts >= opts.max_attempts)
                    .count();
                report(&WatchEvent::Interval {
                    listed: objects.len(),
                    processed,
                    failed,
                    given_up,
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = stop.changed() => {}
        }
    }
    report(&WatchEvent::Stopped);
    Ok(())
}

/// The UTC time now, RFC 3339 with milliseconds (watch state, shard markers).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(path: &str, size: u64, version: &str) -> ObjectMeta {
        ObjectMeta {
            path: path.into(),
            size: Some(size),
            version: Some(version.into()),
        }
    }

    fn entry(o: &ObjectMeta, status: Status, attempts: u32) -> Entry {
        Entry {
            path: o.path.clone(),
            size: o.size,
            version: o.version.clone(),
            status,
            at: now(),
            attempts,
            rows_read: 1,
            rows_accepted: 1,
            rows_rejected: 0,
            outputs: vec![],
            reason: None,
        }
    }

    #[test]
    fn decisions_follow_changes_and_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let mut s = WatchState::open(&path).unwrap();
        let a = meta("a.csv", 10, "v1");
        assert_eq!(s.decide(&a, 3), Decision::Process(1));
        s.record(entry(&a, Status::Done, 1)).unwrap();
        assert_eq!(s.decide(&a, 3), Decision::Skip);
        // rewritten in place: processed again
        assert_eq!(s.decide(&meta("a.csv", 10, "v2"), 3), Decision::Process(1));
        assert_eq!(s.decide(&meta("a.csv", 11, "v1"), 3), Decision::Process(1));
        let b = meta("b.csv", 5, "v1");
        s.record(entry(&b, Status::Failed, 1)).unwrap();
        assert_eq!(s.decide(&b, 3), Decision::Process(2));
        s.record(entry(&b, Status::Failed, 3)).unwrap();
        assert_eq!(s.decide(&b, 3), Decision::Skip, "given up");
        assert_eq!(s.decide(&meta("b.csv", 6, "v2"), 3), Decision::Process(1));
        drop(s);
        // durable: a new watcher sees the same
        let s = WatchState::open(&path).unwrap();
        assert_eq!(s.decide(&a, 3), Decision::Skip);
        assert_eq!(s.decide(&b, 3), Decision::Skip);
        assert_eq!(s.entries().count(), 2);
    }

    #[test]
    fn one_watcher_per_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let _first = WatchState::open(&path).unwrap();
        let e = WatchState::open(&path).unwrap_err();
        assert!(e.to_string().contains("another watcher"), "{e}");
        // reading does not need the lock
        assert!(WatchState::read(&path).unwrap().is_empty());
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_damage_before_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let a = meta("a.csv", 10, "v1");
        let good = serde_json::to_string(&entry(&a, Status::Done, 1)).unwrap();
        fs::write(&path, format!("{good}\n{{\"path\":\"b.cs")).unwrap();
        let s = WatchState::open(&path).unwrap();
        assert_eq!(s.decide(&a, 3), Decision::Skip);
        drop(s);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{good}\n"));
        fs::write(&path, format!("garbage\n{good}\n")).unwrap();
        let e = WatchState::open(&path).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}
