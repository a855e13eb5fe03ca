//! The streaming CSV decoder.

use std::collections::HashMap;

use keylink_core::format::{Cut, Decoder, Layout, Splitter, count_newlines};
use keylink_core::record::{FieldPlan, RecordBatch, ValueKind};
use keylink_core::reject::{RejectReason, Rejects};
use keylink_core::{Error, Result};
use memchr::{memchr, memchr3, memrchr};

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// The largest record, in source bytes (its fields, delimiters and quotes, without the line
/// terminator), that the decoder reads: a larger record is rejected
/// ([`RejectReason::RecordTooLarge`]), its bytes dropped as they come, and reading goes on after
/// it. A larger header fails the object.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Where the parser is inside the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between records: line terminators are skipped here (blank lines).
    StartRecord,
    /// At the start of a field (after a delimiter, or at the start of a record).
    StartField,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just after a `"` inside a quoted field: either `""` or the closing quote.
    QuoteInQuoted,
}

/// How far the byte order mark at the start of the input has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bom {
    /// The first `n` bytes of the input are the first `n` bytes of a BOM (held back).
    Pending(u8),
    /// Decided: the BOM, if any, is dropped.
    Done,
}

/// Streaming decoder of one CSV object (see the [crate] documentation for the rules).
///
/// The current record is parsed into reused buffers of the decoder and copied into the
/// [`RecordBatch`] when complete, so a record cut by a chunk's end never stays open in the batch.
/// No allocation happens per record once the buffers have grown to the largest record.
#[derive(Debug)]
pub struct CsvDecoder {
    delim: u8,
    plan_fields: Vec<String>,
    plan_required: Vec<bool>,
    /// The header, once read.
    header: Option<Vec<String>>,
    /// (slot, column) of every planned field that the header has.
    slot_cols: Vec<(usize, usize)>,
    /// Set when the object failed as a whole; later calls fail the same way.
    failed: Option<String>,

    state: State,
    bom: Bom,
    /// The line the parser is on (1-based).
    line: u64,
    /// The line the current record started on.
    rec_line: u64,
    /// The current record's unescaped fields, one after the other.
    rec: Vec<u8>,
    /// The current record's field ends in `rec`.
    ends: Vec<u32>,
    /// The current record's source bytes from earlier chunks (for rejects).
    src_carry: Vec<u8>,
    /// See [`MAX_RECORD_BYTES`].
    max_record: usize,
    /// The current record is larger than `max_record`: it is parsed to its end (to know where
    /// the next one starts) but its bytes are dropped, and it becomes a reject.
    oversized: bool,
}

impl CsvDecoder {
    /// A decoder filling the slots of `plan`, with field delimiter `delimiter`.
    pub fn new(plan: &FieldPlan, delimiter: u8) -> Self {
        CsvDecoder {
            delim: delimiter,
            plan_fields: plan
                .fields()
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect(),
            plan_required: (0..plan.len()).map(|i| plan.is_required(i)).collect(),
            header: None,
            slot_cols: Vec::new(),
            failed: None,
            state: State::StartRecord,
            bom: Bom::Pending(0),
            line: 1,
            rec_line: 1,
            rec: Vec::new(),
            ends: Vec::new(),
            src_carry: Vec::new(),
            max_record: MAX_RECORD_BYTES,
            oversized: false,
        }
    }

    /// The header columns, once read.
    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    #[cfg(test)]
    pub(crate) fn set_max_record(&mut self, max: usize) {
        self.max_record = max;
    }

    #[cfg(test)]
    pub(crate) fn rec_capacity(&self) -> usize {
        self.rec.capacity()
    }

    #[cfg(test)]
    pub(crate) fn ends_capacity(&self) -> usize {
        self.ends.capacity()
    }

    fn fail(&mut self, message: String) -> Error {
        self.failed = Some(message.clone());
        Error::data(message)
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(m) => Err(Error::data(m.clone())),
            None => Ok(()),
        }
    }

    /// Drops a BOM at the start of the input; returns the rest of `chunk` to parse.
    fn strip_bom<'c>(
        &mut self,
        chunk: &'c [u8],
        out: &mut RecordBatch,
        rejects: &mut Rejects,
    ) -> Result<&'c [u8]> {
        let Bom::Pending(n) = self.bom else {
            return Ok(chunk);
        };
        let n = n as usize;
        let take = (BOM.len() - n).min(chunk.len());
        if chunk[..take] == BOM[n..n + take] {
            if n + take == BOM.len() {
                self.bom = Bom::Done;
            } else {
                self.bom = Bom::Pending((n + take) as u8);
            }
            return Ok(&chunk[take..]);
        }
        // Not a BOM: the bytes held back are data.
        self.bom = Bom::Done;
        if n > 0 {
            self.feed(&BOM[..n], out, rejects)?;
        }
        Ok(chunk)
    }

    /// Parses `input`, completing records into `out`.
    fn feed(&mut self, input: &[u8], out: &mut RecordBatch, rejects: &mut Rejects) -> Result<()> {
        let len = input.len();
        let delim = self.delim;
        let mut pos = 0;
        // Where the current record's source starts in `input` (earlier bytes are in src_carry).
        let mut src_start = 0;
        loop {
            match self.state {
                State::StartRecord => {
                    while pos < len {
                        match input[pos] {
                            b'\n' => self.line += 1,
                            b'\r' => {}
                            _ => break,
                        }
                        pos += 1;
                    }
                    if pos == len {
                        return Ok(());
                    }
                    self.rec.clear();
                    self.ends.clear();
                    self.src_carry.clear();
                    self.oversized = false;
                    self.rec_line = self.line;
                    src_start = pos;
                    self.state = State::StartField;
                }
                State::StartField => {
                    let Some(&b) = input.get(pos) else { break };
                    if b == b'"' {
                        pos += 1;
                        self.state = State::Quoted;
                    } else if b == delim {
                        pos += 1;
                        self.ends.push(self.rec.len() as u32);
                    } else if b == b'\n' || b == b'\r' {
                        self.ends.push(self.rec.len() as u32);
                        self.complete(&input[src_start..pos], out, rejects)?;
                    } else {
                        self.state = State::Unquoted;
                    }
                }
                State::Unquoted => match memchr3(delim, b'\n', b'\r', &input[pos..]) {
                    Some(i) => {
                        self.rec.extend_from_slice(&input[pos..pos + i]);
                        pos += i;
                        self.ends.push(self.rec.len() as u32);
                        if input[pos] == delim {
                            pos += 1;
                            self.state = State::StartField;
                        } else {
                            self.complete(&input[src_start..pos], out, rejects)?;
                        }
                    }
                    None => {
                        self.rec.extend_from_slice(&input[pos..]);
                        pos = len;
                        break;
                    }
                },
                State::Quoted => {
                    let rest = &input[pos..];
                    let (content, next) = match memchr(b'"', rest) {
                        Some(i) => (&rest[..i], State::QuoteInQuoted),
                        None => (rest, State::Quoted),
                    };
                    self.line += content.iter().filter(|&&b| b == b'\n').count() as u64;
                    self.rec.extend_from_slice(content);
                    if next == State::Quoted {
                        pos = len;
                        break;
                    }
                    pos += content.len() + 1;
                    self.state = next;
                }
                State::QuoteInQuoted => {
                    let Some(&b) = input.get(pos) else { break };
                    if b == b'"' {
                        self.rec.push(b'"');
                        pos += 1;
                        self.state = State::Quoted;
                    } else if b == delim {
                        self.ends.push(self.rec.len() as u32);
                        pos += 1;
                        self.state = State::StartField;
                    } else if b == b'\n' || b == b'\r' {
                        self.ends.push(self.rec.len() as u32);
                        self.complete(&input[src_start..pos], out, rejects)?;
                    } else {
                        // Lenient, like the csv crate: text after the closing quote is kept.
                        self.state = State::Unquoted;
                    }
                }
            }
        }
        // The chunk ended inside a record: keep its source for a possible reject.
        debug_assert_eq!(pos, len);
        self.src_carry.extend_from_slice(&input[src_start..]);
        if self.oversized || self.src_carry.len() > self.max_record {
            if self.header.is_none() {
                return Err(self.fail(format!(
                    "the CSV header (line {}) is larger than {} MiB; is a quote not closed?",
                    self.rec_line,
                    self.max_record >> 20
                )));
            }
            // keep parsing to the record's end, without its bytes
            self.oversized = true;
            self.rec.clear();
            self.ends.clear();
            self.src_carry.clear();
        }
        Ok(())
    }

    /// Rejects the current, oversized record (its bytes are gone: not even a `rejected_data`
    /// target gets them).
    fn reject_oversized(&mut self, rejects: &mut Rejects, why: &str) {
        self.oversized = false;
        self.rec.clear();
        self.ends.clear();
        self.src_carry.clear();
        rejects.push_counted(
            self.rec_line,
            RejectReason::RecordTooLarge,
            format!(
                "the record is larger than {} MiB{why}",
                self.max_record >> 20
            ),
        );
    }

    /// Handles the complete current record, whose source is `src_carry` + `tail` (without the
    /// line terminator). The terminator, if any, is left for `StartRecord` to count.
    fn complete(
        &mut self,
        tail: &[u8],
        out: &mut RecordBatch,
        rejects: &mut Rejects,
    ) -> Result<()> {
        self.state = State::StartRecord;
        if self.oversized || self.src_carry.len() + tail.len() > self.max_record {
            if self.header.is_none() {
                return Err(self.fail(format!(
                    "the CSV header (line {}) is larger than {} MiB",
                    self.rec_line,
                    self.max_record >> 20
                )));
            }
            self.reject_oversized(rejects, "");
            return Ok(());
        }
        let Some(header) = &self.header else {
            return self.read_header();
        };
        let found = self.ends.len();
        if found != header.len() {
            let detail = format!("expected {} fields, found {found}", header.len());
            self.reject(RejectReason::WrongColumnCount, detail, tail, rejects);
            return Ok(());
        }
        if let Some(col) = first_invalid_field(&self.rec, &self.ends) {
            let detail = format!("field '{}' is not valid UTF-8", header[col]);
            self.reject(RejectReason::InvalidUtf8, detail, tail, rejects);
            return Ok(());
        }
        out.begin_record(self.rec_line);
        out.raw_mut().extend_from_slice(&self.rec);
        for &end in &self.ends {
            out.push_offset(end);
        }
        for &(slot, col) in &self.slot_cols {
            let start = if col == 0 { 0 } else { self.ends[col - 1] };
            let end = self.ends[col];
            out.set_value(
                slot,
                &self.rec[start as usize..end as usize],
                (col as u32, 0),
                ValueKind::Text,
            );
        }
        out.end_record();
        Ok(())
    }

    fn reject(&mut self, reason: RejectReason, detail: String, tail: &[u8], rejects: &mut Rejects) {
        let raw = if self.src_carry.is_empty() {
            tail
        } else {
            self.src_carry.extend_from_slice(tail);
            &self.src_carry
        };
        rejects.push(self.rec_line, reason, detail, raw);
    }

    /// Takes the current record as the header.
    fn read_header(&mut self) -> Result<()> {
        let mut names = Vec::with_capacity(self.ends.len());
        let mut start = 0;
        for (i, &end) in self.ends.iter().enumerate() {
            match std::str::from_utf8(&self.rec[start..end as usize]) {
                Ok(name) => names.push(name.to_owned()),
                Err(_) => {
                    return Err(self.fail(format!(
                        "the CSV header (line {}) is not valid UTF-8 in column {}",
                        self.rec_line,
                        i + 1
                    )));
                }
            }
            start = end as usize;
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(names.len());
        let mut duplicate = None;
        for (i, name) in names.iter().enumerate() {
            if index.insert(name.as_str(), i).is_some() {
                duplicate = Some(name.clone());
                break;
            }
        }
        if let Some(name) = duplicate {
            return Err(self.fail(format!(
                "the CSV header has the column '{name}' more than once; column names must be unique"
            )));
        }
        let mut slot_cols = Vec::new();
        let mut missing = None;
        for (slot, field) in self.plan_fields.iter().enumerate() {
            match index.get(field.as_str()) {
                Some(&col) => slot_cols.push((slot, col)),
                None if self.plan_required[slot] => {
                    missing = Some(field.clone());
                    break;
                }
                None => {}
            }
        }
        if let Some(field) = missing {
            let n = names.len();
            return Err(self.fail(format!(
                "column '{field}' is required but not in the header; header has {n} columns"
            )));
        }
        self.slot_cols = slot_cols;
        self.header = Some(names);
        Ok(())
    }
}

/// The index of the first field of `rec` (cut at `ends`) that is not valid UTF-8.
fn first_invalid_field(rec: &[u8], ends: &[u32]) -> Option<usize> {
    // Fast path: the whole record is valid and no field starts inside a character.
    if std::str::from_utf8(rec).is_ok()
        && ends
            .iter()
            .all(|&e| rec.get(e as usize).is_none_or(|&b| (b as i8) >= -0x40))
    {
        return None;
    }
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        if std::str::from_utf8(&rec[start..end as usize]).is_err() {
            return Some(i);
        }
        start = end as usize;
    }
    None
}

impl Decoder for CsvDecoder {
    fn decode(&mut self, chunk: &[u8], out: &mut RecordBatch, rejects: &mut Rejects) -> Result<()> {
        self.check_failed()?;
        let chunk = self.strip_bom(chunk, out, rejects)?;
        self.feed(chunk, out, rejects)
    }

    fn finish(&mut self, out: &mut RecordBatch, rejects: &mut Rejects) -> Result<()> {
        self.check_failed()?;
        if let Bom::Pending(n) = self.bom {
            self.bom = Bom::Done;
            self.feed(&BOM[..n as usize], out, rejects)?;
        }
        match self.state {
            State::StartRecord => {}
            State::StartField | State::Unquoted | State::QuoteInQuoted => {
                self.ends.push(self.rec.len() as u32);
                self.complete(&[], out, rejects)?;
            }
            State::Quoted => {
                self.state = State::StartRecord;
                if self.header.is_none() {
                    return Err(self.fail(
                        "the CSV header has a quoted field that is not closed before the end of \
                         the input"
                            .to_owned(),
                    ));
                }
                if self.oversized {
                    self.reject_oversized(
                        rejects,
                        "; a quoted field is not closed before the end of the input",
                    );
                } else {
                    let detail =
                        "a quoted field is not closed before the end of the input".to_owned();
                    self.reject(RejectReason::BadCsv, detail, &[], rejects);
                }
            }
        }
        if self.header.is_none() {
            return Err(self.fail(
                "the CSV input has no header row (it is empty or has only blank lines)".to_owned(),
            ));
        }
        Ok(())
    }

    fn layout(&self) -> Option<Layout> {
        self.header.as_ref().map(|h| Layout {
            columns: Some(h.clone()),
        })
    }

    fn splitter(&self) -> Option<Box<dyn Splitter>> {
        Some(Box::new(CsvSplitter::new(self.delim)))
    }

    fn fork(&self, line: u64) -> Option<Box<dyn Decoder>> {
        let between_records = self.state == State::StartRecord && self.bom == Bom::Done;
        if self.failed.is_some() || self.header.is_none() || !between_records {
            return None;
        }
        Some(Box::new(CsvDecoder {
            delim: self.delim,
            plan_fields: self.plan_fields.clone(),
            plan_required: self.plan_required.clone(),
            header: self.header.clone(),
            slot_cols: self.slot_cols.clone(),
            failed: None,
            state: State::StartRecord,
            bom: Bom::Done,
            line,
            rec_line: line,
            rec: Vec::new(),
            ends: Vec::new(),
            src_carry: Vec::new(),
            max_record: self.max_record,
            oversized: false,
        }))
    }
}

/// Finds where [`CsvDecoder`] is between records, for decoding an object in pieces
/// ([`Splitter`]).
///
/// It runs the decoder's state machine without copying anything, and only where a quote can
/// change it: outside quotes, a `"` opens a quoted field only at a field's start (after a
/// delimiter or a line break, or at a record's start), and is text anywhere else, so the state
/// before a `"` is told by the byte before it. It cuts after the last `\n` outside quotes, where
/// the decoder is between records whatever came before (a record ends at CR or LF, and blank
/// lines are skipped), and counts lines as the decoder does: every `\n`.
#[derive(Debug)]
pub(crate) struct CsvSplitter {
    delim: u8,
    state: State,
    /// Bytes of the byte order mark matched at the input's start (3: decided).
    bom: u8,
    /// The line at the end of what was scanned.
    line: u64,
}

impl CsvSplitter {
    pub(crate) fn new(delim: u8) -> Self {
        CsvSplitter {
            delim,
            state: State::StartRecord,
            bom: 0,
            line: 1,
        }
    }

    /// The state after `b`, a byte outside quotes other than `"`.
    fn after(&self, b: u8) -> State {
        if b == self.delim {
            State::StartField
        } else if b == b'\n' || b == b'\r' {
            State::StartRecord
        } else {
            State::Unquoted
        }
    }
}

impl Splitter for CsvSplitter {
    fn scan(&mut self, chunk: &[u8]) -> Option<Cut> {
        // the decoder drops a BOM at the start; a partial one is text (two bytes at most, both
        // plain text to the state machine)
        let mut skip = 0;
        while self.bom < 3 {
            let &b = chunk.get(skip)?;
            if b == BOM[self.bom as usize] {
                self.bom += 1;
                skip += 1;
            } else {
                if self.bom > 0 {
                    self.state = State::Unquoted;
                }
                self.bom = 3;
            }
        }
        let input = &chunk[skip..];
        let len = input.len();
        let mut pos = 0;
        let mut last = None;
        while pos < len {
            match self.state {
                State::Quoted => match memchr(b'"', &input[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        self.state = State::QuoteInQuoted;
                    }
                    None => pos = len,
                },
                State::QuoteInQuoted => {
                    let b = input[pos];
                    if b == b'"' {
                        pos += 1;
                        self.state = State::Quoted;
                    } else {
                        // the closing quote: what follows is read as after a field's text
                        // (a delimiter, a line break, or text kept by the lenient decoder)
                        self.state = State::Unquoted;
                    }
                }
                State::StartRecord | State::StartField | State::Unquoted => {
                    let rest = &input[pos..];
                    let quote = memchr(b'"', rest);
                    let plain = &rest[..quote.unwrap_or(rest.len())];
                    if let Some(nl) = memrchr(b'\n', plain) {
                        last = Some(pos + nl + 1);
                    }
                    let before = plain.last().map_or(self.state, |&b| self.after(b));
                    match quote {
                        Some(i) => {
                            pos += i + 1;
                            self.state = match before {
                                State::StartRecord | State::StartField => State::Quoted,
                                _ => State::Unquoted,
                            };
                        }
                        None => {
                            pos = len;
                            self.state = before;
                        }
                    }
                }
            }
        }
        let cut = last.map(|at| {
            self.line += count_newlines(&input[..at]);
            Cut {
                at: skip + at,
                line: self.line,
            }
        });
        self.line += count_newlines(&input[last.unwrap_or(0)..]);
        cut
    }
}
