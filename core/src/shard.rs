//! Sharded runs (SPEC §10): many workers on one job, each on a deterministic slice of the
//! inputs, sharing one key store; and `finalize`, which checks that every shard committed and
//! writes a `_SUCCESS` manifest.
//!
//! How a sharded job hangs together:
//!
//! - Shard `I` of `N` reads the `I`-th of `N` contiguous slices of the selected objects, sorted
//!   by path ([`Shard::slice`]), so the parts in shard order hold the rows of one unsharded run
//!   in the same order. Every output goes to `<stem>.part-I-of-N.<ext>` next to the unsharded
//!   output ([`part_path`]).
//! - The workers must share the key group (`batch_job_group_id`): a session that crosses an
//!   object boundary then gets one key across all parts, and the parts' ciphertexts are the
//!   bytes one unsharded run with that group writes. A sharded job without a group is refused.
//! - After its outputs are committed, a shard commits a small marker next to the first output,
//!   `_<stem>.part-I-of-N.json` ([`ShardMarker`]): its inputs (path, version) and its outputs
//!   (path, rows). A worker killed before that has no marker, so `finalize` refuses the job
//!   until the shard is rerun. Names starting with `_` are skipped by Spark, Hive, Trino and
//!   friends, like their own `_SUCCESS`.
//! - `keylink finalize` reads the `N` markers, checks that each shard's inputs are still
//!   the slice it would read now (an object added or changed after the shard ran is refused,
//!   not silently missing), reads every part back for its size and SHA-256 and writes
//!   `_SUCCESS` next to the markers ([`SuccessManifest`]). A later run of any shard deletes
//!   `_SUCCESS` first: the manifest never describes parts that were replaced after it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::connector::{BuildContext, ObjectMeta, Source};
use crate::engine::{CheckedJob, Destination, PreparedJob, ShardPlan, connector_config};
use crate::error::{Error, ErrorKind, Result};
use crate::job::Config;
use crate::summary::JobSummary;

/// The environment variable Kubernetes Indexed Jobs set to the pod's index.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The environment variable with the number of shards (next to [`INDEX_ENV`]).
pub const SHARDS_ENV: &str = "KEYLINK_SHARDS";
/// The manifest `finalize` writes.
pub const SUCCESS: &str = "_SUCCESS";
/// The version of the marker and manifest layout.
pub const MANIFEST_VERSION: u32 = 1;

/// One of `count` deterministic slices of a job's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which slice, `0 ≤ index < count`.
    pub index: u32,
    /// How many slices.
    pub count: u32,
}

impl Shard {
    /// A shard, checked.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 {
            return Err(Error::config("a job cannot have 0 shards"));
        }
        if index >= count {
            return Err(Error::config(format!(
                "shard {index} of {count} does not exist: shards are numbered 0 to {}",
                count - 1
            )));
        }
        Ok(Shard { index, count })
    }

    /// The shard from `JOB_COMPLETION_INDEX` and `KEYLINK_SHARDS` (`lookup` reads a variable),
    /// `None` when neither is set. One without the other is an error: a Kubernetes Indexed Job
    /// whose pods all ran the whole job would write the same outputs N times over.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let index = lookup(INDEX_ENV).filter(|v| !v.trim().is_empty());
        let count = lookup(SHARDS_ENV).filter(|v| !v.trim().is_empty());
        let number = |name: &str, v: &str| {
            v.trim().parse::<u32>().map_err(|_| {
                Error::config(format!("{name}={v:?} is not a non-negative whole number"))
            })
        };
        match (index, count) {
            (None, None) => Ok(None),
            (Some(i), Some(n)) => Ok(Some(Shard::new(
                number(INDEX_ENV, &i)?,
                number(SHARDS_ENV, &n)?,
            )?)),
            (Some(_), None) => Err(Error::config(format!(
                "{INDEX_ENV} is set but {SHARDS_ENV} is not: set {SHARDS_ENV} to the number of \
                 shards (the Indexed Job's completions), or pass --shard I/N"
            ))),
            (None, Some(_)) => Err(Error::config(format!(
                "{SHARDS_ENV} is set but {INDEX_ENV} is not: pass --shard I/N"
            ))),
        }
    }

    /// This shard's slice of `objects` (sorted by path, as `select_objects` returns them): the
    /// `index`-th of `count` contiguous runs, as even as whole objects allow. Empty when there
    /// are fewer objects than shards.
    pub fn slice<'a>(&self, objects: &'a [ObjectMeta]) -> &'a [ObjectMeta] {
        let (i, n, len) = (self.index as usize, self.count as usize, objects.len());
        &objects[i * len / n..(i + 1) * len / n]
    }

    /// `part-I-of-N`.
    pub fn part(&self) -> String {
        format!("part-{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;

    /// `I/N`, as in `--shard 2/8`.
    fn from_str(s: &str) -> Result<Self> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| Error::config(format!("--shard {s:?}: expected I/N, as in 0/4")))?;
        let number = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| Error::config(format!("--shard {s:?}: expected I/N, as in 0/4")))
        };
        Shard::new(number(i)?, number(n)?)
    }
}

/// `dir/stem.ext` → `dir/stem.part-I-of-N.ext` (the extension after the last dot of the file
/// name; a name without one, or starting with its only dot, gets the part at its end).
pub fn part_path(path: &str, shard: Shard) -> String {
    let (dir, name) = split_name(path);
    let part = shard.part();
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{dir}{}.{part}{}", &name[..dot], &name[dot..]),
        _ => format!("{dir}{name}.{part}"),
    }
}

/// The marker shard `shard` commits next to `first_output` (the unsharded path of the job's
/// first output): `dir/_stem.part-I-of-N.json`.
pub fn marker_path(first_output: &str, shard: Shard) -> String {
    let (dir, name) = split_name(first_output);
    let stem = match name.rfind('.') {
        Some(dot) if dot > 0 => &name[..dot],
        _ => name,
    };
    format!("{dir}_{stem}.{}.json", shard.part())
}

/// `_SUCCESS` in the directory of `first_output`.
pub fn success_path(first_output: &str) -> String {
    let (dir, _) = split_name(first_output);
    format!("{dir}{SUCCESS}")
}

/// (`dir/` with its slash, or empty; the file name).
fn split_name(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(slash) => (&path[..=slash], &path[slash + 1..]),
        None => ("", path),
    }
}

/// What a shard commits after its outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMarker {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The job file, as given.
    pub job: String,
    /// Which shard.
    pub shard: Shard,
    /// The key group all shards share.
    pub key_group: String,
    /// The input objects the shard read, in order.
    pub inputs: Vec<InputRef>,
    /// The objects it committed.
    pub outputs: Vec<PartRef>,
    /// Records read, accepted, rejected.
    pub rows_read: u64,
    /// Records accepted.
    pub rows_accepted: u64,
    /// Records rejected.
    pub rows_rejected: u64,
    /// When the shard committed (UTC, RFC 3339).
    pub committed_at: String,
}

/// An input object as a shard saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// Its path in the source.
    pub path: String,
    /// Its version (ETag, generation, mtime) when the store has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl From<&ObjectMeta> for InputRef {
    fn from(o: &ObjectMeta) -> Self {
        InputRef {
            path: o.path.clone(),
            version: o.version.clone(),
        }
    }
}

/// One committed part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    /// `encrypted`, `keys`, `rejected`, `derived[0]`.
    pub output: String,
    /// The target's connector.
    pub connector: String,
    /// The object's path in that connector.
    pub path: String,
    /// Records written.
    pub rows: u64,
    /// Its size (filled by `finalize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Hex SHA-256 of its bytes (filled by `finalize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `_SUCCESS`: every shard's inputs and parts, with sizes and checksums.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuccessManifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The job file, as given to `finalize`.
    pub job: String,
    /// How many shards.
    pub shards: u32,
    /// The key group.
    pub key_group: String,
    /// When `finalize` wrote this (UTC, RFC 3339).
    pub finalized_at: String,
    /// Records read, accepted, rejected over all shards.
    pub rows_read: u64,
    /// Records accepted.
    pub rows_accepted: u64,
    /// Records rejected.
    pub rows_rejected: u64,
    /// Rows per output over all parts (`encrypted`, `keys`, …).
    pub rows_by_output: BTreeMap<String, u64>,
    /// Each shard's marker, its parts with `bytes` and `sha256` filled.
    pub parts: Vec<ShardMarker>,
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// An error for a job that cannot be finalized (yet).
pub(crate) fn incomplete(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::NotFound, message)
}

impl CheckedJob {
    /// Makes this a run of `shard`: every output goes to its `part-I-of-N` name, the inputs are
    /// the shard's slice, and the run commits a marker after its outputs. Refused for a job
    /// without `batch_job_group_id` (the shards would not share keys: a session crossing an
    /// object boundary would get one key per shard) and for `{input}` targets.
    pub fn with_shard(mut self, shard: Shard) -> Result<Self> {
        self.check_shardable()?;
        let first = self.outputs.first().ok_or_else(|| {
            Error::config(format!("{}: the job has no output to shard", self.job_file))
        })?;
        let plan = ShardPlan {
            shard,
            connector: first.connector.clone(),
            marker: marker_path(&first.path, shard),
            success: success_path(&first.path),
        };
        let (first_path, first_location) = (first.path.clone(), first.location.clone());
        let mut places = Vec::new();
        for t in &mut self.outputs {
            let part = part_path(&t.path, shard);
            t.location = renamed(&t.location, &t.path, &part)
                .ok_or_else(|| self_location_error(&self.job_file, &t.name))?;
            t.path = part;
            places.push(crate::safety::Place {
                role: format!("{}: the {} output ({})", self.job_file, t.name, t.path),
                location: t.location.clone(),
            });
        }
        for (what, path) in [("shard marker", &plan.marker), ("_SUCCESS", &plan.success)] {
            let location = renamed(&first_location, &first_path, path)
                .ok_or_else(|| self_location_error(&self.job_file, what))?;
            places.push(crate::safety::Place {
                role: format!("{}: the {what} ({path})", self.job_file),
                location,
            });
        }
        // the part names, the marker and _SUCCESS may not be inputs or where the job reads
        crate::safety::check_locations(&places, &[], Some(&self.selection))?;
        self.shard = Some(plan);
        Ok(self)
    }

    fn check_shardable(&self) -> Result<()> {
        if let Some(t) = self.outputs.iter().find(|t| t.topic.is_some()) {
            return Err(Error::not_supported(format!(
                "{}: sharding a job with topic targets (the {} output) is not supported: its \
                 messages are committed in one transaction per run, and shards are separate runs",
                self.job_file, t.name
            )));
        }
        if self.per_input {
            return Err(Error::not_supported(format!(
                "{}: sharding a job whose targets name {{input}} is not supported: such a job \
                 already writes outputs per input object; remove {{input}} to shard it",
                self.job_file
            )));
        }
        if !self.fixed_group {
            return Err(Error::config(format!(
                "{}: a sharded job needs encryption.batch_job_group_id: the shards share keys \
                 through it (without one, every shard would make its own keys and a session \
                 crossing an object boundary would get a key per shard)",
                self.job_file
            )));
        }
        Ok(())
    }

    /// `keylink finalize`: checks that all `shards` shards of this (unsharded, prepared) job
    /// committed — each one's marker present, its inputs still the slice it would read now, its
    /// parts present with the job's part names — reads every part back for its size and SHA-256
    /// and writes `_SUCCESS` next to the markers. Refuses, writing nothing, otherwise.
    pub async fn finalize(&self, config: &Config, shards: u32) -> Result<SuccessManifest> {
        self.check_shardable()?;
        Shard::new(0, shards)?;
        if self.shard.is_some() {
            return Err(Error::new(
                ErrorKind::Other,
                "finalize takes the unsharded job",
            ));
        }
        let first = self
            .outputs
            .first()
            .ok_or_else(|| Error::config(format!("{}: the job has no output", self.job_file)))?;
        let ctx = BuildContext {
            base_dir: config.base_dir.clone(),
        };
        let mut sources: BTreeMap<String, Arc<dyn Source>> = BTreeMap::new();
        for t in &self.outputs {
            if !sources.contains_key(&t.connector) {
                let cfg = connector_config(config, &t.connector, &self.job_file, &t.name)?;
                let source = cfg
                    .build_source(&ctx)
                    .await
                    .map_err(|e| e.context(format!("connector '{}'", t.connector)))?;
                sources.insert(t.connector.clone(), source);
            }
        }
        let home = sources[&first.connector].clone();
        let all = self.all_inputs().await?;

        let mut missing = Vec::new();
        let mut markers = Vec::new();
        for index in 0..shards {
            let shard = Shard::new(index, shards)?;
            let path = marker_path(&first.path, shard);
            match crate::connector::read_all(home.as_ref(), &path).await {
                Ok(bytes) => {
                    let marker: ShardMarker = serde_json::from_slice(&bytes).map_err(|e| {
                        Error::new(
                            ErrorKind::Data,
                            format!("{}: not a shard marker: {e}", home.describe(&path)),
                        )
                    })?;
                    markers.push((shard, path, marker));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => missing.push(index.to_string()),
                Err(e) => return Err(e.context(home.describe(&path))),
            }
        }
        if !missing.is_empty() {
            return Err(incomplete(format!(
                "{}: shard{} {} of {shards} ha{} not committed (no marker next to {}); run \
                 `keylink run {} --shard I/{shards}` for each, then finalize again",
                self.job_file,
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                if missing.len() > 1 { "ve" } else { "s" },
                home.describe(&first.path),
                self.job_file,
            )));
        }

        let mut rows_by_output = BTreeMap::new();
        let (mut read, mut accepted, mut rejected) = (0, 0, 0);
        let mut parts = Vec::new();
        for (shard, path, mut marker) in markers {
            let shown = home.describe(&path);
            if marker.shard != shard || marker.key_group != self.key_group {
                return Err(Error::new(
                    ErrorKind::Data,
                    format!(
                        "{shown}: the marker is of shard {} with key group {:?}, the job's is \
                         shard {shard} with {:?}; rerun shard {}",
                        marker.shard, marker.key_group, self.key_group, shard.index
                    ),
                ));
            }
            let now: Vec<InputRef> = shard.slice(&all).iter().map(InputRef::from).collect();
            if now != marker.inputs {
                return Err(Error::new(
                    ErrorKind::Data,
                    format!(
                        "{shown}: shard {shard} read {} input object(s), but its slice of the \
                         inputs is now {} different or changed object(s) (objects were added, \
                         removed or rewritten since it ran); rerun shard {}",
                        marker.inputs.len(),
                        now.iter().filter(|o| !marker.inputs.contains(o)).count()
                            + marker.inputs.iter().filter(|o| !now.contains(o)).count(),
                        shard.index
                    ),
                ));
            }
            let want: Vec<(String, String, String)> = self
                .outputs
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.connector.clone(),
                        part_path(&t.path, shard),
                    )
                })
                .collect();
            let have: Vec<(String, String, String)> = marker
                .outputs
                .iter()
                .map(|p| (p.output.clone(), p.connector.clone(), p.path.clone()))
                .collect();
            if want != have {
                return Err(Error::new(
                    ErrorKind::Data,
                    format!(
                        "{shown}: shard {shard} wrote other outputs than the job has now \
                         (targets changed since it ran); rerun shard {}",
                        shard.index
                    ),
                ));
            }
            for p in &mut marker.outputs {
                let source = &sources[&p.connector];
                let (bytes, sha256) = checksum(source.as_ref(), &p.path).await.map_err(|e| {
                    e.context(format!("shard {shard}: part {}", source.describe(&p.path)))
                })?;
                p.bytes = Some(bytes);
                p.sha256 = Some(sha256);
                *rows_by_output.entry(p.output.clone()).or_insert(0) += p.rows;
            }
            read += marker.rows_read;
            accepted += marker.rows_accepted;
            rejected += marker.rows_rejected;
            parts.push(marker);
        }
        let manifest = SuccessManifest {
            version: MANIFEST_VERSION,
            job: self.job_file.clone(),
            shards,
            key_group: self.key_group.clone(),
            finalized_at: crate::watch::now(),
            rows_read: read,
            rows_accepted: accepted,
            rows_rejected: rejected,
            rows_by_output,
            parts,
        };
        let cfg = connector_config(config, &first.connector, &self.job_file, &first.name)?;
        let sink = cfg
            .build_sink(&ctx)
            .await
            .map_err(|e| e.context(format!("connector '{}'", first.connector)))?;
        let success = success_path(&first.path);
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::new(ErrorKind::Other, format!("_SUCCESS: {e}")))?;
        crate::connector::write_all(sink.as_ref(), &success, Bytes::from(json))
            .await
            .map_err(|e| e.context(sink.describe(&success)))?;
        Ok(manifest)
    }
}

impl PreparedJob {
    /// Where a sharded run's marker and `_SUCCESS` go: the first output's sink (a job with a
    /// topic target cannot be sharded, so it is an object target).
    fn marker_sink(&self) -> Result<&Arc<dyn crate::connector::Sink>> {
        match self.outputs().next() {
            Some((_, Destination::Object(sink))) => Ok(sink),
            _ => Err(Error::not_supported(format!(
                "{}: a sharded run needs an object target first, for its marker",
                self.job_file
            ))),
        }
    }

    pub(crate) async fn delete_success(&self, plan: &ShardPlan) -> Result<()> {
        let sink = self.marker_sink()?;
        match sink.delete(&plan.success).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.context(format!(
                "removing {} before shard {} runs",
                sink.describe(&plan.success),
                plan.shard
            ))),
        }
    }

    pub(crate) async fn write_marker(
        &self,
        plan: &ShardPlan,
        inputs: &[ObjectMeta],
        summary: &JobSummary,
    ) -> Result<()> {
        let outputs = summary
            .outputs
            .iter()
            .map(|o| {
                let t = self
                    .outputs
                    .iter()
                    .find(|t| t.name == o.name)
                    .ok_or_else(|| Error::new(ErrorKind::Other, "an output without a target"))?;
                Ok(PartRef {
                    output: o.name.clone(),
                    connector: t.connector.clone(),
                    path: t.path.clone(),
                    rows: o.rows,
                    bytes: None,
                    sha256: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let marker = ShardMarker {
            version: MANIFEST_VERSION,
            job: self.job_file.clone(),
            shard: plan.shard,
            key_group: self.key_group.clone(),
            inputs: inputs.iter().map(InputRef::from).collect(),
            outputs,
            rows_read: summary.rows_read,
            rows_accepted: summary.rows_accepted,
            rows_rejected: summary.rows_rejected,
            committed_at: crate::watch::now(),
        };
        let sink = self.marker_sink()?;
        let json = serde_json::to_vec_pretty(&marker)
            .map_err(|e| Error::new(ErrorKind::Other, format!("shard marker: {e}")))?;
        crate::connector::write_all(sink.as_ref(), &plan.marker, Bytes::from(json))
            .await
            .map_err(|e| {
                e.context(format!(
                    "shard {}: its outputs are committed, but its marker {} is not; rerun the \
                     shard",
                    plan.shard,
                    sink.describe(&plan.marker)
                ))
            })
    }
}

/// An object's size and hex SHA-256, streamed.
async fn checksum(source: &dyn Source, path: &str) -> Result<(u64, String)> {
    let mut reader = source.open(path).await?;
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = reader.read_chunk().await? {
        bytes += chunk.len() as u64;
        hash.update(&chunk);
    }
    Ok((bytes, hex(&hash.finalize())))
}

/// `loc` with its key's trailing `old_path` file name replaced by `new_path`'s.
fn renamed(
    loc: &crate::connector::ObjectLocation,
    old_path: &str,
    new_path: &str,
) -> Option<crate::connector::ObjectLocation> {
    let (_, old) = split_name(old_path);
    let (_, new) = split_name(new_path);
    let prefix = loc.key.strip_suffix(old)?;
    let mut l = loc.clone();
    l.key = format!("{prefix}{new}");
    Some(l)
}

fn self_location_error(job: &str, what: &str) -> Error {
    Error::not_supported(format!(
        "{job}: the {what}'s connector names objects in a way keylink cannot derive part names \
         from; sharding is not supported for it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(n: usize) -> Vec<ObjectMeta> {
        (0..n)
            .map(|i| ObjectMeta {
                path: format!("in/{i:03}.csv"),
                size: Some(1),
                version: None,
            })
            .collect()
    }

    #[test]
    fn slices_cover_every_object_once_in_order() {
        for len in [0, 1, 3, 4, 7, 10, 101] {
            let all = objects(len);
            for n in 1..=6u32 {
                let mut union = Vec::new();
                for i in 0..n {
                    let s = Shard::new(i, n).unwrap().slice(&all);
                    // as even as whole objects allow
                    assert!(s.len() <= len.div_ceil(n as usize), "{len} {i}/{n}");
                    union.extend(s.iter().map(|o| o.path.clone()));
                }
                let want: Vec<String> = all.iter().map(|o| o.path.clone()).collect();
                assert_eq!(union, want, "{len} objects in {n} shards");
            }
        }
    }

    #[test]
    fn parses_and_checks_shards() {
        assert_eq!(
            "2/8".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 8 }
        );
        for bad in ["8/8", "1/0", "x/2", "1", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_from_the_environment() {
        let env = |i: Option<&str>, n: Option<&str>| {
            let (i, n) = (i.map(String::from), n.map(String::from));
            Shard::from_env(move |k| if k == INDEX_ENV { i.clone() } else { n.clone() })
        };
        assert_eq!(env(None, None).unwrap(), None);
        assert_eq!(
            env(Some("3"), Some("4")).unwrap(),
            Some(Shard { index: 3, count: 4 })
        );
        // one without the other would run the whole job in every pod
        let e = env(Some("3"), None).unwrap_err().to_string();
        assert!(e.contains(SHARDS_ENV), "{e}");
        assert!(env(None, Some("4")).is_err());
        assert!(env(Some("4"), Some("4")).is_err());
        assert!(env(Some("a"), Some("4")).is_err());
    }

    #[test]
    fn part_and_marker_names() {
        let s = Shard::new(1, 4).unwrap();
        assert_eq!(part_path("out/enc.csv", s), "out/enc.part-1-of-4.csv");
        assert_eq!(part_path("enc.data.jsonl", s), "enc.data.part-1-of-4.jsonl");
        assert_eq!(part_path("out/keys", s), "out/keys.part-1-of-4");
        assert_eq!(part_path("out/.hidden", s), "out/.hidden.part-1-of-4");
        assert_eq!(part_path("a.b/keys", s), "a.b/keys.part-1-of-4");
        assert_eq!(marker_path("out/enc.csv", s), "out/_enc.part-1-of-4.json");
        assert_eq!(success_path("out/enc.csv"), "out/_SUCCESS");
        assert_eq!(success_path("enc.csv"), "_SUCCESS");
    }
}
