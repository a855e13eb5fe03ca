//! The job summary: counts, never values.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::reject::{Reject, RejectReason};

/// How many line numbers are kept per reject reason and input object.
pub const MAX_LINES_PER_REASON: usize = 100;

/// What a job did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobSummary {
    /// The contract applied (`handle/name/version`).
    pub contract: String,
    /// The key group used (the job's `batch_job_group_id` or this run's fresh group).
    pub key_group: String,
    /// The shard this run was (`I/N`), for a sharded run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Per input object, in processing order.
    pub inputs: Vec<InputSummary>,
    /// Per output object.
    pub outputs: Vec<OutputSummary>,
    /// Records read, over all inputs.
    pub rows_read: u64,
    /// Records accepted.
    pub rows_accepted: u64,
    /// Records rejected.
    pub rows_rejected: u64,
    /// Rejects per reason (over all inputs).
    pub rejected_by_reason: BTreeMap<RejectReason, u64>,
    /// Accepted records whose consent fell back to the default levels.
    pub consent_defaulted: u64,
    /// Keys created by this run.
    pub keys_created: u64,
    /// Keys that existed before and were reused.
    pub keys_reused: u64,
    /// Accepted records whose scope had been forgotten (`keylink subjects forget`): they were
    /// encrypted under a new key, never the destroyed one (SPEC §9).
    pub records_after_forget: u64,
    /// Input bytes read.
    pub bytes_read: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Records read per second.
    pub rows_per_second: f64,
}

/// One input object's counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InputSummary {
    /// The object (`/data/in.csv`, `s3://bucket/key`).
    pub object: String,
    /// Records read.
    pub rows_read: u64,
    /// Records accepted.
    pub rows_accepted: u64,
    /// Rejects per reason, with the first line numbers.
    pub rejects: BTreeMap<RejectReason, RejectLines>,
    /// Fields the contract or job names that no record of this input carried (JSON Lines, where
    /// a record may lack a field): most likely misspelt, so the job's exit code is 1.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields_never_seen: Vec<String>,
}

/// The rejects of one reason in one object.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RejectLines {
    /// How many.
    pub count: u64,
    /// The first [`MAX_LINES_PER_REASON`] line numbers.
    pub lines: Vec<u64>,
    /// What was expected, for the first reject (names fields and counts, never values).
    pub first_detail: String,
}

/// One output object.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutputSummary {
    /// `encrypted`, `keys`, `derived[0]`, `rejected`.
    pub name: String,
    /// The object written.
    pub object: String,
    /// Rows written.
    pub rows: u64,
}

impl InputSummary {
    /// Adds a batch's rejects.
    pub fn add_rejects(&mut self, rejects: &[Reject]) {
        for r in rejects {
            let e = self.rejects.entry(r.reason).or_default();
            if e.count == 0 {
                e.first_detail = r.detail.clone();
            }
            e.count += 1;
            if e.lines.len() < MAX_LINES_PER_REASON {
                e.lines.push(r.line);
            }
        }
    }
}

impl JobSummary {
    /// Adds the counts of another part of the same job (an input object processed as its own
    /// unit); [`JobSummary::finish`] then recomputes the totals.
    pub fn merge(&mut self, part: JobSummary) {
        self.inputs.extend(part.inputs);
        self.outputs.extend(part.outputs);
        self.consent_defaulted += part.consent_defaulted;
        self.keys_created += part.keys_created;
        self.keys_reused += part.keys_reused;
        self.records_after_forget += part.records_after_forget;
        self.bytes_read += part.bytes_read;
    }

    /// Fills the totals from the inputs and sets the time.
    pub fn finish(&mut self, elapsed: Duration) {
        self.rows_read = self.inputs.iter().map(|i| i.rows_read).sum();
        self.rows_accepted = self.inputs.iter().map(|i| i.rows_accepted).sum();
        self.rejected_by_reason.clear();
        for i in &self.inputs {
            for (reason, l) in &i.rejects {
                *self.rejected_by_reason.entry(*reason).or_default() += l.count;
            }
        }
        self.rows_rejected = self.rejected_by_reason.values().sum();
        self.seconds = elapsed.as_secs_f64();
        self.rows_per_second = if self.seconds > 0.0 {
            self.rows_read as f64 / self.seconds
        } else {
            0.0
        };
    }

    /// Whether any record was rejected, or an input lacked a named field in every record: the
    /// job finished, but needs a look (exit code 1).
    pub fn has_rejects(&self) -> bool {
        self.rows_rejected > 0 || self.inputs.iter().any(|i| !i.fields_never_seen.is_empty())
    }
}
