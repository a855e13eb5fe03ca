//! The streaming JSON Lines decoder.

use std::fmt;
use std::sync::Arc;

use keylink_core::format::{Cut, Decoder, Layout, Splitter, count_newlines};
use keylink_core::record::{RecordBatch, ValueKind};
use keylink_core::reject::{RejectReason, Rejects};
use keylink_core::{FieldPlan, Result};

use crate::scan::{CapKind, Fail, RESERVED_KEY, Scanner, Trie, unescape};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Decodes JSON Lines: one JSON object per line (see the crate documentation).
pub(crate) struct JsonlDecoder {
    /// Shared with the decoders [forked](Decoder::fork) from this one.
    trie: Arc<Trie>,
    scanner: Scanner,
    /// The start of a line cut by the end of the previous chunk (never a complete line).
    carry: Vec<u8>,
    /// Physical lines seen so far (the number of the line being decoded, once it started).
    line_no: u64,
    /// Unescaped planned strings of the current line.
    unescaped: Vec<u8>,
    /// The ranges in `unescaped` of the current line's escaped captures, in capture order.
    ranges: Vec<(u32, u32)>,
}

impl fmt::Debug for JsonlDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonlDecoder")
            .field("line", &self.line_no)
            .field("carry_bytes", &self.carry.len())
            .finish()
    }
}

impl JsonlDecoder {
    pub(crate) fn new(plan: &FieldPlan) -> Self {
        JsonlDecoder {
            trie: Arc::new(Trie::new(plan)),
            scanner: Scanner::default(),
            carry: Vec::new(),
            line_no: 0,
            unescaped: Vec::new(),
            ranges: Vec::new(),
        }
    }

    /// Decodes one complete physical line (without its `\n`).
    fn line(&mut self, mut line: &[u8], out: &mut RecordBatch, rejects: &mut Rejects) {
        self.line_no += 1;
        let line_no = self.line_no;
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        if line_no == 1 && line.starts_with(BOM) {
            line = &line[BOM.len()..];
        }
        if line.iter().all(|&c| matches!(c, b' ' | b'\t' | b'\r')) {
            return; // blank
        }
        if line.len() > u32::MAX as usize {
            let detail = "line longer than 4 GiB".to_string();
            rejects.push(line_no, RejectReason::BadJson, detail, line);
            return;
        }
        if let Err(e) = std::str::from_utf8(line) {
            let detail = format!("invalid UTF-8 at column {}", e.valid_up_to() + 1);
            rejects.push(line_no, RejectReason::InvalidUtf8, detail, line);
            return;
        }
        let first = match self.scanner.scan(&self.trie, line) {
            Ok(first) => first,
            Err(fail) => {
                let detail = match fail {
                    Fail::Syntax(i) => format!("invalid JSON at column {}", i + 1),
                    Fail::Eof(i) => format!("unexpected end of JSON at column {}", i + 1),
                    Fail::Trailing(i) => format!("trailing characters at column {}", i + 1),
                    Fail::Duplicate(node) => format!("duplicate key '{}'", self.trie.path(node)),
                    Fail::Reserved => format!("reserved key '{RESERVED_KEY}'"),
                };
                rejects.push(line_no, RejectReason::BadJson, detail, line);
                return;
            }
        };
        if first != b'{' {
            let found = match first {
                b'[' => "an array",
                b'"' => "a string",
                b't' | b'f' => "a boolean",
                b'n' => "null",
                _ => "a number",
            };
            let detail = format!("expected a JSON object, found {found}");
            rejects.push(line_no, RejectReason::BadJson, detail, line);
            return;
        }

        // Unescape planned strings first: a lone surrogate rejects the line.
        self.unescaped.clear();
        self.ranges.clear();
        for c in &self.scanner.captures {
            if c.kind == CapKind::TextEscaped {
                let start = self.unescaped.len() as u32;
                let content = &line[c.start as usize + 1..c.end as usize - 1];
                if unescape(content, &mut self.unescaped).is_err() {
                    let detail = format!(
                        "invalid \\u escape (lone surrogate) in field '{}'",
                        self.trie.slot_path(c.slot)
                    );
                    rejects.push(line_no, RejectReason::BadJson, detail, line);
                    return;
                }
                self.ranges.push((start, self.unescaped.len() as u32));
            }
        }

        out.begin_record(line_no);
        out.raw_mut().extend_from_slice(line);
        let mut ranges = self.ranges.iter();
        for c in &self.scanner.captures {
            let slot = c.slot as usize;
            let span = (c.start, c.end);
            let json = &line[c.start as usize..c.end as usize];
            match c.kind {
                CapKind::Null => out.set_null(slot),
                CapKind::Json => out.set_value(slot, json, span, ValueKind::Json),
                CapKind::Text => {
                    out.set_value(slot, &json[1..json.len() - 1], span, ValueKind::Text)
                }
                CapKind::TextEscaped => {
                    let &(a, b) = ranges.next().expect("one range per escaped capture");
                    let value = &self.unescaped[a as usize..b as usize];
                    out.set_value(slot, value, span, ValueKind::Text)
                }
            }
        }
        out.end_record();
    }
}

impl Decoder for JsonlDecoder {
    fn decode(&mut self, chunk: &[u8], out: &mut RecordBatch, rejects: &mut Rejects) -> Result<()> {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                self.carry.extend_from_slice(rest);
                return Ok(());
            };
            self.carry.extend_from_slice(&rest[..nl]);
            let carry = std::mem::take(&mut self.carry);
            self.line(&carry, out, rejects);
            self.carry = carry;
            self.carry.clear();
            rest = &rest[nl + 1..];
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', rest) {
            self.line(&rest[start..nl], out, rejects);
            start = nl + 1;
        }
        self.carry.extend_from_slice(&rest[start..]);
        Ok(())
    }

    fn finish(&mut self, out: &mut RecordBatch, rejects: &mut Rejects) -> Result<()> {
        if !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            self.line(&carry, out, rejects);
            self.carry = carry;
            self.carry.clear();
        }
        Ok(())
    }

    fn layout(&self) -> Option<Layout> {
        Some(Layout { columns: None })
    }

    fn splitter(&self) -> Option<Box<dyn Splitter>> {
        Some(Box::new(LineSplitter { line: 1 }))
    }

    fn fork(&self, line: u64) -> Option<Box<dyn Decoder>> {
        if !self.carry.is_empty() || line == 0 {
            return None;
        }
        Some(Box::new(JsonlDecoder {
            trie: self.trie.clone(),
            scanner: Scanner::default(),
            carry: Vec::new(),
            line_no: line - 1,
            unescaped: Vec::new(),
            ranges: Vec::new(),
        }))
    }
}

/// Cuts JSON Lines after a `\n`: JSON text holds no raw line break, so every `\n` ends a
/// record ([`Splitter`]).
#[derive(Debug)]
struct LineSplitter {
    /// The line at the end of what was scanned.
    line: u64,
}

impl Splitter for LineSplitter {
    fn scan(&mut self, chunk: &[u8]) -> Option<Cut> {
        // no `\n` after the last one: what follows the cut adds no line
        let at = memchr::memrchr(b'\n', chunk)? + 1;
        self.line += count_newlines(&chunk[..at]);
        Some(Cut {
            at,
            line: self.line,
        })
    }
}
