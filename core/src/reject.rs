//! Rejected records: counted with a position and a reason, never with their values.

use std::fmt;

use serde::Serialize;

/// Why a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// A CSV record whose number of fields differs from the header's.
    WrongColumnCount,
    /// Bytes that are not valid UTF-8.
    InvalidUtf8,
    /// The contract's keyField is missing, null or empty.
    MissingKeyField,
    /// The timestamp field is missing or does not match the timestamp format.
    UnparseableTimestamp,
    /// A field does not match a validation of the contract.
    FailedValidation,
    /// A JSON Lines line that is not a JSON object.
    BadJson,
    /// A CSV record the CSV parser could not read.
    BadCsv,
    /// `keylink decrypt`: the record's key link is not in the keys export (never exported, or
    /// deleted: crypto-shredding).
    UnknownKey,
    /// `keylink decrypt`: a PII value does not decrypt under the record's key.
    Undecryptable,
    /// A record larger than the format's limit (CSV: 64 MiB); its bytes are not kept.
    RecordTooLarge,
    /// `keylink stream`: the event's time is further ahead of the clock than the stream's
    /// `max_future_skew` allows (a wrong clock or time zone would otherwise open keys of future
    /// windows).
    FutureTimestamp,
    /// `keylink stream`: the event's own `strmMeta` is not `{"consentLevels": [ints]}`, or it
    /// carries consent although the job reads consent from a field (ambiguous).
    BadStrmMeta,
}

impl RejectReason {
    /// Stable snake_case name, as in the JSON summary.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::WrongColumnCount => "wrong_column_count",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MissingKeyField => "missing_key_field",
            RejectReason::UnparseableTimestamp => "unparseable_timestamp",
            RejectReason::FailedValidation => "failed_validation",
            RejectReason::BadJson => "bad_json",
            RejectReason::BadCsv => "bad_csv",
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::Undecryptable => "undecryptable",
            RejectReason::RecordTooLarge => "record_too_large",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::BadStrmMeta => "bad_strm_meta",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The source line the record starts on (1-based).
    pub line: u64,
    /// Why.
    pub reason: RejectReason,
    /// What was expected, naming fields and counts only — never values
    /// (`"field 'Email' does not match validation 1"`, `"expected 5 fields, found 4"`).
    pub detail: String,
}

/// The rejects of one batch, with the raw records kept only when a `rejected_data` target wants
/// them.
#[derive(Debug, Default)]
pub struct Rejects {
    items: Vec<Reject>,
    keep_raw: bool,
    raw: Vec<u8>,
    raw_records: usize,
}

impl Rejects {
    /// A collector; `keep_raw` keeps the raw bytes of each rejected record.
    pub fn new(keep_raw: bool) -> Self {
        Rejects {
            keep_raw,
            ..Default::default()
        }
    }

    /// Records a reject. `raw` is the record's source bytes (kept only if configured).
    pub fn push(&mut self, line: u64, reason: RejectReason, detail: String, raw: &[u8]) {
        self.items.push(Reject {
            line,
            reason,
            detail,
        });
        if self.keep_raw {
            self.raw.extend_from_slice(raw);
            if !raw.ends_with(b"\n") {
                self.raw.push(b'\n');
            }
            self.raw_records += 1;
        }
    }

    /// Records a reject without its raw bytes (the caller writes the record itself when raw
    /// records are kept).
    pub fn push_counted(&mut self, line: u64, reason: RejectReason, detail: String) {
        self.items.push(Reject {
            line,
            reason,
            detail,
        });
    }

    /// The rejects so far.
    pub fn items(&self) -> &[Reject] {
        &self.items
    }

    /// Raw rejected records, newline-terminated (empty unless `keep_raw`).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// How many records [`Rejects::raw`] holds.
    pub fn raw_records(&self) -> usize {
        self.raw_records
    }

    /// Whether raw records are kept.
    pub fn keeps_raw(&self) -> bool {
        self.keep_raw
    }

    /// Number of rejects.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the rejects out, leaving this empty (buffers reused).
    pub fn drain(&mut self) -> (Vec<Reject>, Vec<u8>) {
        self.raw_records = 0;
        (
            std::mem::take(&mut self.items),
            std::mem::take(&mut self.raw),
        )
    }
}
