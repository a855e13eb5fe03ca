//! The batch record model.
//!
//! A [`RecordBatch`] holds a few thousand records in a handful of reused buffers (the idea of the
//! csv crate's `ByteRecord`, for a whole batch): no allocation per row once the buffers are warm.
//!
//! The engine does not care what a record looks like on the wire. It needs only the values of the
//! few fields the job uses — keyField, timestamp, consent, PII, validated and masked fields — which
//! the [`FieldPlan`] lists as *slots*. A format's decoder fills, for every record:
//!
//! - its **raw** bytes, in a shape only that format understands (CSV: the unescaped fields one
//!   after the other, with their ends in `offsets`; JSON Lines: the line itself), which the same
//!   format's encoder later re-emits, and
//! - one [`Slot`] per plan field: missing, null, or a value (unescaped bytes) plus the span of the
//!   value in the raw bytes, so the encoder can replace it.
//!
//! The privacy transform then describes each output row as [`Edit`]s of slots plus metadata
//! ([`OutputRows`]), and the encoder writes the raw record with those edits applied.
//!
//! `Debug` of a batch shows its shape, never its bytes.

use std::fmt;
use std::ops::Range;

/// A field the job needs, addressed by name (CSV column) or `/`-separated path (JSON).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    name: String,
}

impl FieldPath {
    /// A field path such as `Email` or `customer/id`.
    pub fn new(name: impl Into<String>) -> Self {
        FieldPath { name: name.into() }
    }

    /// The path as written in the contract (`customer/id`).
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The path's segments (`["customer", "id"]`). A plain CSV column name is one segment.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.name.split('/')
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.name)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The fields a job reads, in slot order. Built once per job from the contract and the job.
#[derive(Debug, Clone, Default)]
pub struct FieldPlan {
    fields: Vec<FieldPath>,
    required: Vec<bool>,
}

impl FieldPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` (once) and returns its slot index. A field is `required` when every input file
    /// must have it (CSV: a header column); requiring it once makes it required.
    pub fn slot(&mut self, path: &str, required: bool) -> usize {
        if let Some(i) = self.fields.iter().position(|f| f.as_str() == path) {
            self.required[i] |= required;
            return i;
        }
        self.fields.push(FieldPath::new(path));
        self.required.push(required);
        self.fields.len() - 1
    }

    /// The slot index of `path`, if planned.
    pub fn index_of(&self, path: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.as_str() == path)
    }

    /// The planned fields in slot order.
    pub fn fields(&self) -> &[FieldPath] {
        &self.fields
    }

    /// Whether slot `i` is required in every input file.
    pub fn is_required(&self, i: usize) -> bool {
        self.required[i]
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the plan has no slots.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// What kind of value a slot holds, as the source wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Text: a CSV field or a JSON string (the slot value is unescaped).
    Text,
    /// A JSON number, boolean, object or array (the slot value is its JSON text).
    Json,
}

/// One slot of one record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The field is not in the record (a JSON key that is absent; a CSV column the file lacks).
    Missing,
    /// The field is JSON `null`.
    Null,
    /// The field has a value.
    Value {
        /// The unescaped value's range in the batch's value buffer.
        value: (u32, u32),
        /// Where the value sits in the record's raw bytes; meaning is format-defined (CSV: the
        /// field index in `start`; JSON: the byte range of the JSON value in the line).
        span: (u32, u32),
        /// Text or other JSON.
        kind: ValueKind,
    },
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Missing => f.write_str("Missing"),
            Slot::Null => f.write_str("Null"),
            Slot::Value { value, kind, .. } => {
                write!(f, "Value({kind:?}, {} bytes)", value.1 - value.0)
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    line: u64,
    raw: (u32, u32),
    offsets: (u32, u32),
}

/// A batch of decoded records. Buffers are reused across batches via [`RecordBatch::clear`].
#[derive(Default)]
pub struct RecordBatch {
    n_slots: usize,
    raw: Vec<u8>,
    offsets: Vec<u32>,
    values: Vec<u8>,
    entries: Vec<Entry>,
    slots: Vec<Slot>,
    // the record being built
    open: Option<Entry>,
}

impl fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBatch")
            .field("records", &self.entries.len())
            .field("slots_per_record", &self.n_slots)
            .field("raw_bytes", &self.raw.len())
            .finish()
    }
}

impl RecordBatch {
    /// An empty batch for records with `n_slots` slots.
    pub fn new(n_slots: usize) -> Self {
        RecordBatch {
            n_slots,
            ..Default::default()
        }
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.raw.clear();
        self.offsets.clear();
        self.values.clear();
        self.entries.clear();
        self.slots.clear();
        self.open = None;
    }

    /// Slots per record.
    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Number of finished records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch has no finished records.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (raw + values); the decoder cuts batches by this.
    pub fn byte_size(&self) -> usize {
        self.raw.len() + self.values.len()
    }

    // ---- building (decoders) ----

    /// Starts a record at source line `line` (1-based; for CSV the line the record starts on).
    /// Its slots start out [`Slot::Missing`].
    pub fn begin_record(&mut self, line: u64) {
        debug_assert!(self.open.is_none(), "begin_record while a record is open");
        let raw = self.raw.len() as u32;
        let off = self.offsets.len() as u32;
        self.open = Some(Entry {
            line,
            raw: (raw, raw),
            offsets: (off, off),
        });
        self.slots
            .extend(std::iter::repeat_n(Slot::Missing, self.n_slots));
    }

    /// The open record's raw buffer (append to it). Offsets and spans are relative to the
    /// record's start, which is `raw_start()`.
    pub fn raw_mut(&mut self) -> &mut Vec<u8> {
        &mut self.raw
    }

    /// Where the open record's raw bytes start in the raw buffer.
    pub fn raw_start(&self) -> usize {
        self.open.map_or(self.raw.len(), |e| e.raw.0 as usize)
    }

    /// Appends a format-defined offset to the open record (CSV: a field end, relative to the
    /// record's raw start).
    pub fn push_offset(&mut self, offset: u32) {
        self.offsets.push(offset);
    }

    /// Sets slot `slot` of the open record to JSON null.
    pub fn set_null(&mut self, slot: usize) {
        let base = self.slots.len() - self.n_slots;
        self.slots[base + slot] = Slot::Null;
    }

    /// Sets slot `slot` of the open record to `value` (unescaped), found at `span` in the raw
    /// record.
    pub fn set_value(&mut self, slot: usize, value: &[u8], span: (u32, u32), kind: ValueKind) {
        let start = self.values.len() as u32;
        self.values.extend_from_slice(value);
        let end = self.values.len() as u32;
        let base = self.slots.len() - self.n_slots;
        self.slots[base + slot] = Slot::Value {
            value: (start, end),
            span,
            kind,
        };
    }

    /// Finishes the open record.
    pub fn end_record(&mut self) {
        let mut e = self.open.take().expect("end_record without begin_record");
        e.raw.1 = self.raw.len() as u32;
        e.offsets.1 = self.offsets.len() as u32;
        self.entries.push(e);
    }

    /// Drops the open record (a decoder found it bad after starting it).
    pub fn discard_record(&mut self) {
        if let Some(e) = self.open.take() {
            self.raw.truncate(e.raw.0 as usize);
            self.offsets.truncate(e.offsets.0 as usize);
            self.slots.truncate(self.slots.len() - self.n_slots);
            // values written for the discarded record stay as garbage until clear(); harmless.
        }
    }

    // ---- reading ----

    /// A view of record `i`.
    pub fn record(&self, i: usize) -> RecordView<'_> {
        RecordView {
            batch: self,
            entry: self.entries[i],
            slots: &self.slots[i * self.n_slots..(i + 1) * self.n_slots],
        }
    }

    /// Views of all records in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordView<'_>> {
        (0..self.len()).map(|i| self.record(i))
    }
}

/// A borrowed view of one record of a [`RecordBatch`].
#[derive(Clone, Copy)]
pub struct RecordView<'a> {
    batch: &'a RecordBatch,
    entry: Entry,
    slots: &'a [Slot],
}

impl fmt::Debug for RecordView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("line", &self.entry.line)
            .field("raw_bytes", &(self.entry.raw.1 - self.entry.raw.0))
            .field("slots", &self.slots)
            .finish()
    }
}

impl<'a> RecordView<'a> {
    /// The source line the record starts on (1-based).
    pub fn line(&self) -> u64 {
        self.entry.line
    }

    /// The record's raw bytes (format-defined).
    pub fn raw(&self) -> &'a [u8] {
        &self.batch.raw[self.entry.raw.0 as usize..self.entry.raw.1 as usize]
    }

    /// The record's format-defined offsets.
    pub fn offsets(&self) -> &'a [u32] {
        &self.batch.offsets[self.entry.offsets.0 as usize..self.entry.offsets.1 as usize]
    }

    /// Slot `i`.
    pub fn slot(&self, i: usize) -> Slot {
        self.slots[i]
    }

    /// All slots.
    pub fn slots(&self) -> &'a [Slot] {
        self.slots
    }

    /// The value bytes of slot `i`: `None` when missing or null.
    pub fn value(&self, i: usize) -> Option<&'a [u8]> {
        match self.slots[i] {
            Slot::Value { value, .. } => Some(self.value_bytes(value)),
            _ => None,
        }
    }

    /// The bytes of a value range from a [`Slot::Value`].
    pub fn value_bytes(&self, range: (u32, u32)) -> &'a [u8] {
        &self.batch.values[range.0 as usize..range.1 as usize]
    }
}

/// What an output does with one slot of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Write the source value unchanged.
    Keep,
    /// Write this text instead (a range of the rows' values, [`OutputRows::text`]).
    Text(u32, u32),
    /// Write this JSON value instead, as it is (a range of the rows' values holding one
    /// JSON value on one line): a decrypted PII value that the source held as a number, boolean,
    /// object or array. Formats without JSON values write it as text.
    Json(u32, u32),
}

/// Per-record metadata appended to every output row (`strmMeta`).
#[derive(Debug, Clone, Copy)]
pub struct RowMeta {
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
    /// The key link of the row's key.
    pub key_link: uuid::Uuid,
    /// The row's consent levels, a range of the rows' values ([`OutputRows::text`]) holding
    /// e.g. `[1,2]`.
    pub consent_levels: (u32, u32),
    /// The PII fields whose source value was JSON other than a string (number, boolean, object,
    /// array), as a JSON array of their paths (`["age","customer"]`), a range in
    /// the rows' values; empty (the default) when there are none, as always in CSV. Their
    /// ciphertext encrypts the value's JSON text; this list is how a later `keylink decrypt`
    /// knows to restore the value as JSON rather than as a string (see
    /// [`crate::derive::restore_plaintext`]).
    pub json_fields: (u32, u32),
}

/// The rows of one output for one batch: which records, with which slot edits and metadata.
#[derive(Debug, Default)]
pub struct OutputRows {
    n_slots: usize,
    /// Index into the [`RecordBatch`] of each output row.
    rows: Vec<u32>,
    edits: Vec<Edit>,
    metas: Vec<RowMeta>,
    values: Vec<u8>,
}

impl OutputRows {
    /// Empty output rows for records with `n_slots` slots.
    pub fn new(n_slots: usize) -> Self {
        OutputRows {
            n_slots,
            ..Default::default()
        }
    }

    /// Empties, keeping buffers.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.edits.clear();
        self.metas.clear();
        self.values.clear();
    }

    /// Slots per row.
    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Room for `additional` more rows (not their values: [`OutputRows::values_mut`]).
    pub fn reserve_rows(&mut self, additional: usize) {
        self.rows.reserve(additional);
        self.metas.reserve(additional);
        self.edits.reserve(additional * self.n_slots);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Starts a row for record `record` with all slots [`Edit::Keep`].
    pub fn push_row(&mut self, record: usize, meta: RowMeta) {
        self.rows.push(record as u32);
        self.metas.push(meta);
        self.edits
            .extend(std::iter::repeat_n(Edit::Keep, self.n_slots));
    }

    /// Removes the last row (its replacement text stays in the buffer, unused).
    pub fn pop_row(&mut self) {
        if self.rows.pop().is_some() {
            self.metas.pop();
            self.edits.truncate(self.edits.len() - self.n_slots);
        }
    }

    /// The value buffer: append replacement text, then call [`OutputRows::replace_from`].
    pub fn values_mut(&mut self) -> &mut Vec<u8> {
        &mut self.values
    }

    /// Current length of the value buffer (the start of the next appended text).
    pub fn values_len(&self) -> u32 {
        self.values.len() as u32
    }

    /// Makes slot `slot` of the last row the text at `start..end`, appended earlier (for this
    /// row or another: rows may share a text).
    pub fn set_text(&mut self, slot: usize, start: u32, end: u32) {
        debug_assert!(start <= end && end <= self.values.len() as u32);
        let base = self.edits.len() - self.n_slots;
        self.edits[base + slot] = Edit::Text(start, end);
    }

    /// Makes slot `slot` of the last row the text appended since `start`.
    pub fn replace_from(&mut self, slot: usize, start: u32) {
        let end = self.values.len() as u32;
        let base = self.edits.len() - self.n_slots;
        self.edits[base + slot] = Edit::Text(start, end);
    }

    /// Makes slot `slot` of the last row the JSON value appended since `start` ([`Edit::Json`]).
    pub fn replace_json_from(&mut self, slot: usize, start: u32) {
        let end = self.values.len() as u32;
        let base = self.edits.len() - self.n_slots;
        self.edits[base + slot] = Edit::Json(start, end);
    }

    /// Appends text to the value buffer and returns its range (for metadata such as consent).
    pub fn push_text(&mut self, text: &[u8]) -> (u32, u32) {
        let start = self.values.len() as u32;
        self.values.extend_from_slice(text);
        (start, self.values.len() as u32)
    }

    /// Row `i`: (record index, slot edits, metadata).
    pub fn row(&self, i: usize) -> (usize, &[Edit], &RowMeta) {
        (
            self.rows[i] as usize,
            &self.edits[i * self.n_slots..(i + 1) * self.n_slots],
            &self.metas[i],
        )
    }

    /// The bytes of a text range.
    pub fn text(&self, range: (u32, u32)) -> &[u8] {
        &self.values[range.0 as usize..range.1 as usize]
    }

    /// The bytes of an [`Edit::Text`] or [`Edit::Json`].
    pub fn edit_text(&self, start: u32, end: u32) -> &[u8] {
        &self.values[Range {
            start: start as usize,
            end: end as usize,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back() {
        let mut plan = FieldPlan::new();
        let a = plan.slot("a", true);
        let b = plan.slot("x/y", false);
        assert_eq!(plan.slot("a", false), a);
        assert!(plan.is_required(a));
        let mut batch = RecordBatch::new(plan.len());
        for line in 1..=3u64 {
            batch.begin_record(line);
            let start = batch.raw_start();
            batch.raw_mut().extend_from_slice(b"secret-value");
            let end = batch.raw_mut().len() - start;
            batch.push_offset(end as u32);
            batch.set_value(a, b"secret-value", (0, 0), ValueKind::Text);
            if line == 2 {
                batch.set_null(b);
            }
            batch.end_record();
        }
        batch.begin_record(4);
        batch.raw_mut().extend_from_slice(b"discard me");
        batch.discard_record();

        assert_eq!(batch.len(), 3);
        let r = batch.record(1);
        assert_eq!(r.line(), 2);
        assert_eq!(r.raw(), b"secret-value");
        assert_eq!(r.offsets(), &[12]);
        assert_eq!(r.value(a), Some(&b"secret-value"[..]));
        assert_eq!(r.slot(b), Slot::Null);
        assert_eq!(batch.record(0).slot(b), Slot::Missing);

        // Debug never shows bytes
        let dbg = format!("{batch:?} {r:?}");
        assert!(!dbg.contains("secret"), "{dbg}");

        batch.clear();
        assert!(batch.is_empty());
    }

    #[test]
    fn output_rows_edits() {
        let mut out = OutputRows::new(2);
        let meta = RowMeta {
            timestamp_ms: 1,
            key_link: uuid::Uuid::nil(),
            consent_levels: (0, 0),
            json_fields: (0, 0),
        };
        out.push_row(5, meta);
        let s = out.values_len();
        out.values_mut().extend_from_slice(b"cipher");
        out.replace_from(1, s);
        let (rec, edits, _) = out.row(0);
        assert_eq!(rec, 5);
        assert_eq!(edits[0], Edit::Keep);
        match edits[1] {
            Edit::Text(a, b) => assert_eq!(out.edit_text(a, b), b"cipher"),
            _ => panic!("expected text"),
        }
    }
}
