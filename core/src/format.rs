//! Formats: how bytes become records and records become bytes.
//!
//! [`FormatConfig`] is pure data, registered with `typetag` and **externally** tagged as in the
//! batch-job files keylink accepts: `"data_type": { "csv": { "charset": "UTF-8" } }`.
//! [`Format`] is the running format: it makes a streaming [`Decoder`] per input object and an
//! [`Encoder`] per output object. Formats never do I/O.
//!
//! A decoder fills a [`RecordBatch`] with each record's raw bytes and the values of the
//! [`FieldPlan`]'s slots (see [`crate::record`]); bad records go to [`Rejects`] with a line number
//! and a reason, never their values. The encoder of the same format writes records back with the
//! privacy transform's [`OutputRows`] edits applied and the `strmMeta` fields appended.

use std::fmt;
use std::sync::Arc;

use crate::error::Result;
use crate::record::{FieldPlan, OutputRows, RecordBatch};
use crate::reject::Rejects;

/// A format's configuration, selected by its external tag (`{ "csv": { ... } }`).
#[typetag::serde]
pub trait FormatConfig: fmt::Debug + Send + Sync {
    /// Checks the settings without I/O.
    fn validate(&self) -> Result<()>;

    /// Creates the running format.
    fn build(&self) -> Result<Arc<dyn Format>>;
}

/// The names of the metadata fields every output row carries, in order.
pub const META_FIELDS: [&str; 4] = ["eventContractRef", "timestamp", "keyLink", "consentLevels"];

/// The CSV column names of the metadata fields (`strmMeta.<name>`), in order.
pub const META_COLUMNS: [&str; 4] = [
    "strmMeta.eventContractRef",
    "strmMeta.timestamp",
    "strmMeta.keyLink",
    "strmMeta.consentLevels",
];

/// What an encoder needs to know about the input's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The header columns of a CSV input; `None` for formats without a header.
    pub columns: Option<Vec<String>>,
}

/// A running format.
pub trait Format: Send + Sync + fmt::Debug {
    /// The format's tag (`csv`, `jsonl`).
    fn name(&self) -> &'static str;

    /// A decoder for one input object. Slots of `plan` are filled for every record.
    fn decoder(&self, plan: &FieldPlan) -> Box<dyn Decoder>;

    /// An encoder for one output object of records shaped like `layout`, with `contract_ref`
    /// (`handle/name/version`) as every row's `strmMeta.eventContractRef`.
    fn encoder(
        &self,
        plan: &FieldPlan,
        layout: &Layout,
        contract_ref: &str,
    ) -> Result<Box<dyn Encoder>>;

    /// An encoder of a plain table with these `columns` of text: the keys export (SPEC §2,
    /// [`crate::keys_export`]), which is a CSV table whatever the data's format. A format that
    /// cannot write one (the default) says so, and a job that needs it is refused before any
    /// data is read.
    fn table_encoder(&self, columns: &[&str]) -> Result<Box<dyn TableEncoder>> {
        let _ = columns;
        Err(crate::Error::not_supported(format!(
            "the {} format cannot write a table of text columns",
            self.name()
        )))
    }
}

/// Encoder of a plain table of text columns ([`Format::table_encoder`]).
pub trait TableEncoder: Send {
    /// Writes what comes before the first row (the CSV header); may write nothing.
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<()>;

    /// Writes one row: one value per column, in the columns' order.
    fn row(&mut self, values: &[&[u8]], out: &mut Vec<u8>) -> Result<()>;
}

/// Streaming decoder of one input object.
pub trait Decoder: Send {
    /// Decodes a chunk of bytes (any size, cut anywhere — even inside a record or a UTF-8
    /// sequence). Complete records are appended to `out`; a record cut by the chunk's end is kept
    /// for the next call. Bad records are pushed to `rejects`.
    ///
    /// Errors are for problems with the object as a whole (no header, a required column missing
    /// from the header); the message names what was expected, never a value.
    fn decode(&mut self, chunk: &[u8], out: &mut RecordBatch, rejects: &mut Rejects) -> Result<()>;

    /// Signals the end of input: decodes what is left.
    fn finish(&mut self, out: &mut RecordBatch, rejects: &mut Rejects) -> Result<()>;

    /// The input's layout, known once the header (if any) has been read.
    fn layout(&self) -> Option<Layout>;

    /// A [`Splitter`] for this object, asked for before the first byte is decoded, so that the
    /// object's pieces can be decoded on several cores ([`Decoder::fork`]). `None` (the default)
    /// decodes the object on one thread, with this decoder.
    fn splitter(&self) -> Option<Box<dyn Splitter>> {
        None
    }

    /// A fresh decoder for a piece of the same object that starts at a [`Cut`] on line `line`,
    /// knowing what this decoder learnt from the object's start (the header). Each piece is
    /// decoded on its own, to its end, and [`Decoder::finish`]ed; the records, line numbers and
    /// rejects of all pieces, in order, must be exactly those of one decoder reading the whole
    /// object.
    ///
    /// Returns `None` (the default) when it cannot: the format does not split, the header is not
    /// read yet, or this decoder is not between two records. The engine asks when this decoder
    /// has decoded exactly up to a cut, and decodes on with it when the answer is `None`.
    fn fork(&self, line: u64) -> Option<Box<dyn Decoder>> {
        let _ = line;
        None
    }
}

/// A place between two records, found by a [`Splitter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The offset in the bytes just scanned: a decoder that has read up to here is between two
    /// records, with nothing held back.
    pub at: usize,
    /// The line (1-based, counted from the object's first byte) that the input is on at `at`:
    /// the line a decoder [forked](Decoder::fork) there starts on.
    pub line: u64,
}

/// Finds where an object can be cut between records, without decoding it: the pipeline's one
/// thread only scans, and each piece is decoded by its own batch's task. A splitter sees every
/// byte of the object once, in order, from the first (a byte order mark included), and must cut
/// only where its decoder would be between records — inside a quoted field that holds a line
/// break is not such a place. Scanning should cost a fraction of decoding; the test of a splitter
/// is that decoding in pieces gives what decoding in one piece gives.
pub trait Splitter: Send {
    /// Scans the object's next bytes; returns the last cut in `chunk`, if there is one.
    fn scan(&mut self, chunk: &[u8]) -> Option<Cut>;
}

/// Encoder of one output object.
pub trait Encoder: Send {
    /// Writes what comes before the first row (the CSV header); may write nothing.
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<()>;

    /// Writes `rows` of `batch` with their edits and metadata.
    fn encode(&mut self, batch: &RecordBatch, rows: &OutputRows, out: &mut Vec<u8>) -> Result<()>;

    /// Writes `rows` of `batch` with their edits but **without** appending metadata: the records
    /// already carry it (`keylink decrypt` of an encrypted dataset). The header is the input's
    /// own ([`Encoder::begin_unchanged`]).
    fn encode_edited(
        &mut self,
        batch: &RecordBatch,
        rows: &OutputRows,
        out: &mut Vec<u8>,
    ) -> Result<()>;

    /// Writes what comes before the first record of an *unchanged* copy (the input's own CSV
    /// header, without metadata columns); used for raw rejected records.
    fn begin_unchanged(&mut self, out: &mut Vec<u8>) -> Result<()>;

    /// Writes record `record` of `batch` as the input had it (no edits, no metadata); used for
    /// raw rejected records.
    fn encode_unchanged(
        &mut self,
        batch: &RecordBatch,
        record: usize,
        out: &mut Vec<u8>,
    ) -> Result<()>;
}

/// The number of `\n` bytes in `bytes`: how [`Splitter`]s of line-based formats count lines.
///
/// Summed in blocks of 128 bytes into a byte-wide counter, which the compiler vectorises: a plain
/// `filter().count()` widens every byte to a `usize` and was 7× slower (180 against 24 ms for
/// 219 MB), a tenth of the CPU of `keylink decrypt`.
pub fn count_newlines(bytes: &[u8]) -> u64 {
    let mut blocks = bytes.chunks_exact(128);
    let mut n = 0u64;
    for block in &mut blocks {
        let in_block = block
            .iter()
            .fold(0u8, |sum, &b| sum.wrapping_add(u8::from(b == b'\n')));
        n += u64::from(in_block);
    }
    n + blocks.remainder().iter().filter(|&&b| b == b'\n').count() as u64
}

/// Writes `levels` as the metadata text `[1,2]` into `out`.
pub fn write_levels(levels: &[i32], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(itoa_i64(*l as i64).as_bytes());
    }
    out.push(b']');
}

/// Formats an integer without allocating more than the returned small string.
pub fn itoa_i64(v: i64) -> ItoaBuf {
    let mut buf = ItoaBuf {
        bytes: [0; 20],
        start: 20,
    };
    let neg = v < 0;
    let mut n = v.unsigned_abs();
    loop {
        buf.start -= 1;
        buf.bytes[buf.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        buf.start -= 1;
        buf.bytes[buf.start] = b'-';
    }
    buf
}

/// A formatted integer on the stack (see [`itoa_i64`]).
pub struct ItoaBuf {
    bytes: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    /// The digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// A format for the engine's and the testkit's own tests: one record per line, after a header
/// line.
#[cfg(test)]
pub(crate) mod lines {
    use super::*;
    use crate::record::{FieldPlan, RecordBatch};
    use crate::reject::Rejects;

    /// The format, with the splitter it offers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Lines {
        /// No splitter: decoded on one thread.
        Whole,
        /// Cuts after the last line break.
        Split,
        /// Cuts one byte before the last line break, inside a record, and forks there (a
        /// broken splitter, and a decoder that does not check where it stands).
        Wrong,
    }

    struct LineDecoder {
        format: Lines,
        /// Lines read.
        line: u64,
        header: bool,
        partial: Vec<u8>,
    }

    impl Decoder for LineDecoder {
        fn decode(&mut self, chunk: &[u8], out: &mut RecordBatch, _: &mut Rejects) -> Result<()> {
            for &b in chunk {
                if b != b'\n' {
                    self.partial.push(b);
                    continue;
                }
                self.line += 1;
                if self.header {
                    out.begin_record(self.line);
                    out.raw_mut().extend_from_slice(&self.partial);
                    out.end_record();
                }
                self.header = true;
                self.partial.clear();
            }
            Ok(())
        }
        fn finish(&mut self, out: &mut RecordBatch, rejects: &mut Rejects) -> Result<()> {
            if !self.partial.is_empty() {
                self.decode(b"\n", out, rejects)?;
            }
            Ok(())
        }
        fn layout(&self) -> Option<Layout> {
            self.header.then(|| Layout {
                columns: Some(vec!["n".into()]),
            })
        }
        fn splitter(&self) -> Option<Box<dyn Splitter>> {
            (self.format != Lines::Whole).then(|| {
                Box::new(LineSplitter {
                    wrong: self.format == Lines::Wrong,
                    line: 1,
                }) as Box<dyn Splitter>
            })
        }
        fn fork(&self, line: u64) -> Option<Box<dyn Decoder>> {
            let between = self.partial.is_empty() || self.format == Lines::Wrong;
            (self.format != Lines::Whole && self.header && between).then(|| {
                Box::new(LineDecoder {
                    format: self.format,
                    line: line - 1,
                    header: true,
                    partial: Vec::new(),
                }) as Box<dyn Decoder>
            })
        }
    }

    struct LineSplitter {
        wrong: bool,
        line: u64,
    }

    impl Splitter for LineSplitter {
        fn scan(&mut self, chunk: &[u8]) -> Option<Cut> {
            let at = memchr::memrchr(b'\n', chunk)? + 1;
            self.line += count_newlines(&chunk[..at]);
            let at = if self.wrong && at > 1 { at - 1 } else { at };
            Some(Cut {
                at,
                line: self.line,
            })
        }
    }

    impl Format for Lines {
        fn name(&self) -> &'static str {
            "lines"
        }
        fn decoder(&self, _: &FieldPlan) -> Box<dyn Decoder> {
            Box::new(LineDecoder {
                format: *self,
                line: 0,
                header: false,
                partial: Vec::new(),
            })
        }
        fn encoder(&self, _: &FieldPlan, _: &Layout, _: &str) -> Result<Box<dyn Encoder>> {
            Err(crate::Error::not_supported("the test format only decodes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_counted_in_and_after_whole_blocks() {
        let mut bytes = vec![b'x'; 1000];
        for i in [0, 127, 128, 255, 256, 999] {
            bytes[i] = b'\n';
        }
        assert_eq!(count_newlines(&bytes), 6);
        assert_eq!(count_newlines(&bytes[1..]), 5);
        // a block of only line breaks: 128 fits the byte-wide sum
        assert_eq!(count_newlines(&[b'\n'; 640]), 640);
        assert_eq!(count_newlines(b""), 0);
    }

    #[test]
    fn levels_and_itoa() {
        let mut out = Vec::new();
        write_levels(&[1, 2], &mut out);
        assert_eq!(out, b"[1,2]");
        out.clear();
        write_levels(&[], &mut out);
        assert_eq!(out, b"[]");
        for v in [0i64, 7, -7, 1700000000123, i64::MIN, i64::MAX] {
            assert_eq!(itoa_i64(v).as_bytes(), v.to_string().as_bytes());
        }
    }
}
