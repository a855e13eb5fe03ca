//! The CSV encoder.

use keylink_core::format::{Encoder, Layout, META_COLUMNS, TableEncoder, itoa_i64};
use keylink_core::record::{Edit, FieldPlan, OutputRows, RecordBatch, RecordView};
use keylink_core::{Error, ErrorKind, Result};
use memchr::{memchr, memchr3};

/// No slot maps to this column.
const NO_SLOT: u32 = u32::MAX;

const ONES: u64 = 0x0101_0101_0101_0101;
const QUOTE_WORD: u64 = ONES * b'"' as u64;
const CR_WORD: u64 = ONES * b'\r' as u64;
const LF_WORD: u64 = ONES * b'\n' as u64;

/// Non-zero when some byte of `w` is zero.
#[inline(always)]
fn has_zero_byte(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & (ONES << 7)
}

/// The eight bytes of `b` at `i`.
#[inline(always)]
fn word_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// Length of a hyphenated UUID.
const UUID_LEN: usize = 36;

/// Encoder of one CSV output object: the input's columns (with the edits of their slots applied)
/// followed by the [`META_COLUMNS`].
#[derive(Debug)]
pub struct CsvEncoder {
    delim: u8,
    columns: Vec<String>,
    /// The slot of each column, or `NO_SLOT`.
    col_slot: Vec<u32>,
    /// The contract reference, already escaped.
    contract_ref: Vec<u8>,
    /// A byte that is not special, in every byte of a word.
    filler_word: u64,
    /// The delimiter in every byte of a word.
    delim_word: u64,
    /// Whether timestamps and key links never need quotes (the delimiter is no digit, hex letter
    /// or `-`).
    plain_meta: bool,
    /// Where the bytes that force quotes are in the values of the rows being encoded.
    value_specials: Specials,
}

/// The positions of the bytes that force quotes (the delimiter, `"`, CR, LF) in a buffer, found
/// with one vectorised search, so that a field in it needs a lookup instead of a scan of its own.
#[derive(Debug, Default)]
struct Specials {
    at: Vec<u32>,
    /// The first position at or after the start of the last field asked about: fields are mostly
    /// asked about in buffer order.
    cursor: usize,
}

impl Specials {
    fn find(&mut self, enc: &CsvEncoder, buf: &[u8]) {
        self.at.clear();
        self.cursor = 0;
        let mut i = 0;
        loop {
            i = enc.next_special(buf, i);
            if i >= buf.len() {
                return;
            }
            self.at.push(i as u32);
            i += 1;
        }
    }

    /// Whether `start..end` of the buffer holds a special byte.
    #[inline]
    fn any_in(&mut self, start: u32, end: u32) -> bool {
        if self.at.is_empty() {
            return false;
        }
        if self.cursor > 0 && self.at[self.cursor - 1] >= start {
            // a field before the last one (rows may share a text)
            self.cursor = self.at.partition_point(|&p| p < start);
        } else {
            while self.cursor < self.at.len() && self.at[self.cursor] < start {
                self.cursor += 1;
            }
        }
        self.cursor < self.at.len() && self.at[self.cursor] < end
    }
}

impl CsvEncoder {
    /// An encoder of records decoded from a CSV input with `layout` (its header), whose slots are
    /// those of `plan`, with `contract_ref` as every row's `strmMeta.eventContractRef`.
    ///
    /// Fails with a config error when `layout` has no columns (the input was not CSV).
    pub fn new(
        plan: &FieldPlan,
        layout: &Layout,
        contract_ref: &str,
        delimiter: u8,
    ) -> Result<Self> {
        let Some(columns) = &layout.columns else {
            return Err(Error::config(
                "the csv format needs a CSV input (with a header row) to write CSV; writing CSV \
                 from another input format is not supported yet",
            ));
        };
        let mut col_slot = vec![NO_SLOT; columns.len()];
        for (slot, field) in plan.fields().iter().enumerate() {
            if let Some(col) = columns.iter().position(|c| c == field.as_str()) {
                col_slot[col] = slot as u32;
            }
        }
        let filler = if delimiter == b'a' { b'b' } else { b'a' };
        let mut enc = CsvEncoder {
            delim: delimiter,
            columns: columns.clone(),
            col_slot,
            contract_ref: Vec::new(),
            filler_word: ONES * filler as u64,
            delim_word: ONES * delimiter as u64,
            plain_meta: !matches!(delimiter, b'0'..=b'9' | b'a'..=b'f' | b'-'),
            value_specials: Specials::default(),
        };
        let mut escaped = Vec::new();
        enc.write_field(contract_ref.as_bytes(), &mut escaped);
        enc.contract_ref = escaped;
        Ok(enc)
    }

    /// Whether `field` must be quoted: it holds the delimiter, `"`, CR or LF.
    ///
    /// Checks eight bytes at a time (SWAR); short fields are packed into one word, long ones end
    /// with an overlapping word, so no byte is checked alone.
    #[inline]
    pub(crate) fn needs_quotes(&self, field: &[u8]) -> bool {
        let n = field.len();
        if n < 4 {
            if n == 0 {
                return false;
            }
            // bytes 0, n/2 and n-1 cover every byte of a field of 1 to 3 bytes
            let w = (self.filler_word & !0xFF_FFFF)
                | field[0] as u64
                | (field[n / 2] as u64) << 8
                | (field[n - 1] as u64) << 16;
            return self.hits(w);
        }
        if n < 8 {
            let lo = u32::from_le_bytes(field[..4].try_into().expect("4 bytes"));
            let hi = u32::from_le_bytes(field[n - 4..].try_into().expect("4 bytes"));
            return self.hits(lo as u64 | (hi as u64) << 32);
        }
        let mut i = 0;
        while i + 8 <= n {
            if self.hits(word_at(field, i)) {
                return true;
            }
            i += 8;
        }
        i != n && self.hits(word_at(field, n - 8))
    }

    /// Whether some byte of `w` is special.
    #[inline(always)]
    fn hits(&self, w: u64) -> bool {
        (has_zero_byte(w ^ self.delim_word)
            | has_zero_byte(w ^ QUOTE_WORD)
            | has_zero_byte(w ^ CR_WORD)
            | has_zero_byte(w ^ LF_WORD))
            != 0
    }

    /// Appends `field`, quoted if needed.
    #[inline(always)]
    pub(crate) fn write_field(&self, field: &[u8], out: &mut Vec<u8>) {
        if !self.needs_quotes(field) {
            out.extend_from_slice(field);
            return;
        }
        write_quoted(field, out);
    }

    /// The position of the first byte that forces quotes in `buf` at or after `from`, or
    /// `buf.len()`.
    ///
    /// For a whole record or buffer this is faster than [`Self::needs_quotes`] field by field:
    /// `memchr3` checks 32 bytes at a time where SWAR checks 8, and the fields between two hits
    /// need no check at all. (Measured with `perf` at 1M rows: the per-field scan was about 60 %
    /// of the encoder's own time, and the encoder the largest part of B's CPU.) CR is not one of
    /// memchr3's three bytes: it is searched for only before the first of them.
    #[inline]
    fn next_special(&self, buf: &[u8], from: usize) -> usize {
        let rest = &buf[from..];
        let first = memchr3(self.delim, b'"', b'\n', rest).unwrap_or(rest.len());
        from + memchr(b'\r', &rest[..first]).unwrap_or(first)
    }

    /// Appends the field of record `raw` at `start..end`, with `next` the position of a special
    /// byte of the record at or after `start`, or before `start` when the field that held it was
    /// not written (an edit replaced it): then it is searched for again.
    #[inline(always)]
    fn write_raw(&self, raw: &[u8], start: usize, end: usize, next: &mut usize, out: &mut Vec<u8>) {
        if *next < start {
            *next = self.next_special(raw, start);
        }
        let field = &raw[start..end];
        if *next >= end {
            out.extend_from_slice(field);
        } else {
            write_quoted(field, out);
        }
    }

    /// Appends the fields of `record`, separated by the delimiter: column `c` is what `edit(c,
    /// out)` appends when it returns true, else the record's own bytes.
    #[inline(always)]
    fn write_fields(
        &self,
        record: RecordView<'_>,
        out: &mut Vec<u8>,
        mut edit: impl FnMut(usize, &mut Vec<u8>) -> bool,
    ) {
        let raw = record.raw();
        let mut start = 0;
        let mut next = self.next_special(raw, 0);
        for (c, &end) in record.offsets().iter().enumerate() {
            if c > 0 {
                out.push(self.delim);
            }
            let end = end as usize;
            if !edit(c, out) {
                self.write_raw(raw, start, end, &mut next, out);
            }
            start = end;
        }
    }

    /// [`Self::write_fields`] with `edits`: a field an edit replaces is the edit's text (searched
    /// by `specials`).
    #[inline(always)]
    fn write_edited_fields(
        &self,
        specials: &mut Specials,
        rows: &OutputRows,
        record: RecordView<'_>,
        edits: &[Edit],
        out: &mut Vec<u8>,
    ) {
        self.write_fields(record, out, |c, out| {
            match self.col_slot.get(c).and_then(|&s| edits.get(s as usize)) {
                Some(&Edit::Text(a, b) | &Edit::Json(a, b)) => {
                    Self::write_text(specials, rows, a, b, out);
                    true
                }
                _ => false,
            }
        });
    }

    /// [`Encoder::encode`] with the values' special bytes found (`specials`).
    fn encode_with(
        &self,
        specials: &mut Specials,
        batch: &RecordBatch,
        rows: &OutputRows,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let delim = self.delim;
        let n_cols = self.columns.len();
        for i in 0..rows.len() {
            let (record, edits, meta) = rows.row(i);
            let record = batch.record(record);
            let n_fields = record.offsets().len();
            if n_fields != n_cols {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "a record with {n_fields} fields cannot be written with a header of \
                         {n_cols} columns"
                    ),
                ));
            }
            out.reserve(record.raw().len() + n_cols + self.contract_ref.len() + 64);
            self.write_edited_fields(specials, rows, record, edits, out);
            out.push(delim);
            out.extend_from_slice(&self.contract_ref);
            out.push(delim);
            let mut uuid = [0u8; UUID_LEN];
            meta.key_link.as_hyphenated().encode_lower(&mut uuid);
            if self.plain_meta {
                out.extend_from_slice(itoa_i64(meta.timestamp_ms).as_bytes());
                out.push(delim);
                out.extend_from_slice(&uuid);
            } else {
                self.write_field(itoa_i64(meta.timestamp_ms).as_bytes(), out);
                out.push(delim);
                self.write_field(&uuid, out);
            }
            out.push(delim);
            let (a, b) = meta.consent_levels;
            Self::write_text(specials, rows, a, b, out);
            out.push(b'\n');
        }
        Ok(())
    }

    /// Appends the text of an edit (a range of the rows' values, searched by `specials`).
    #[inline(always)]
    fn write_text(specials: &mut Specials, rows: &OutputRows, a: u32, b: u32, out: &mut Vec<u8>) {
        let text = rows.edit_text(a, b);
        if specials.any_in(a, b) {
            write_quoted(text, out);
        } else {
            out.extend_from_slice(text);
        }
    }
}

/// Appends `field` quoted, its quotes doubled.
fn write_quoted(field: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut rest = field;
    while let Some(i) = memchr(b'"', rest) {
        out.extend_from_slice(&rest[..=i]);
        out.push(b'"');
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// Encoder of a plain CSV table ([`keylink_core::format::Format::table_encoder`]): a header of
/// the column names, then one row per call, quoted like every other row this crate writes.
#[derive(Debug)]
pub struct CsvTableEncoder(CsvEncoder);

impl CsvTableEncoder {
    /// A table with `columns`, fields separated by `delimiter`.
    pub fn new(columns: &[&str], delimiter: u8) -> Self {
        let layout = Layout {
            columns: Some(columns.iter().map(|c| c.to_string()).collect()),
        };
        CsvTableEncoder(
            CsvEncoder::new(&FieldPlan::new(), &layout, "", delimiter)
                .expect("a layout with columns makes an encoder"),
        )
    }
}

impl TableEncoder for CsvTableEncoder {
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.0.begin_unchanged(out)
    }

    fn row(&mut self, values: &[&[u8]], out: &mut Vec<u8>) -> Result<()> {
        if values.len() != self.0.columns.len() {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "a table row has {} values for {} columns",
                    values.len(),
                    self.0.columns.len()
                ),
            ));
        }
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(self.0.delim);
            }
            self.0.write_field(v, out);
        }
        out.push(b'\n');
        Ok(())
    }
}

impl Encoder for CsvEncoder {
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<()> {
        for col in &self.columns {
            self.write_field(col.as_bytes(), out);
            out.push(self.delim);
        }
        for (i, col) in META_COLUMNS.iter().enumerate() {
            if i > 0 {
                out.push(self.delim);
            }
            self.write_field(col.as_bytes(), out);
        }
        out.push(b'\n');
        Ok(())
    }

    fn begin_unchanged(&mut self, out: &mut Vec<u8>) -> Result<()> {
        for (i, col) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(self.delim);
            }
            self.write_field(col.as_bytes(), out);
        }
        out.push(b'\n');
        Ok(())
    }

    fn encode_unchanged(
        &mut self,
        batch: &RecordBatch,
        record: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.write_fields(batch.record(record), out, |_, _| false);
        out.push(b'\n');
        Ok(())
    }

    fn encode_edited(
        &mut self,
        batch: &RecordBatch,
        rows: &OutputRows,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let mut specials = std::mem::take(&mut self.value_specials);
        specials.find(self, rows.text((0, rows.values_len())));
        for i in 0..rows.len() {
            let (record, edits, _) = rows.row(i);
            self.write_edited_fields(&mut specials, rows, batch.record(record), edits, out);
            out.push(b'\n');
        }
        self.value_specials = specials;
        Ok(())
    }

    fn encode(&mut self, batch: &RecordBatch, rows: &OutputRows, out: &mut Vec<u8>) -> Result<()> {
        let mut specials = std::mem::take(&mut self.value_specials);
        specials.find(self, rows.text((0, rows.values_len())));
        let encoded = self.encode_with(&mut specials, batch, rows, out);
        self.value_specials = specials;
        encoded
    }
}
