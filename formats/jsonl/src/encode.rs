//! The JSON Lines encoder: raw lines with edited values and `strmMeta` appended.

use std::cmp::Reverse;
use std::fmt;

use keylink_core::format::{Encoder, META_FIELDS, itoa_i64};
use keylink_core::record::{Edit, OutputRows, RecordBatch, Slot};
use keylink_core::{Error, ErrorKind, FieldPlan, Result};

use crate::scan::RESERVED_KEY;

/// The optional `strmMeta` member listing the PII fields whose source value was JSON other than
/// a string (see [`keylink_core::record::RowMeta::json_fields`]).
pub(crate) const JSON_FIELDS: &str = "jsonFields";

/// Writes records of [`crate::decode::JsonlDecoder`] back as JSON Lines.
pub(crate) struct JsonlEncoder {
    /// `"strmMeta":{"eventContractRef":"<ref>","timestamp":`
    meta_prefix: Vec<u8>,
    /// Slot names, for error messages.
    fields: Vec<String>,
    /// The current row's replacements: (span start, span end, text start, text end, slot,
    /// whether the text is a JSON value to write as it is).
    edits: Vec<(u32, u32, u32, u32, u32, bool)>,
}

impl fmt::Debug for JsonlEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonlEncoder")
            .field("fields", &self.fields)
            .finish()
    }
}

impl JsonlEncoder {
    pub(crate) fn new(plan: &FieldPlan, contract_ref: &str) -> Self {
        let mut meta_prefix = Vec::new();
        write_json_string(RESERVED_KEY.as_bytes(), &mut meta_prefix);
        meta_prefix.extend_from_slice(b":{");
        write_json_string(META_FIELDS[0].as_bytes(), &mut meta_prefix);
        meta_prefix.push(b':');
        write_json_string(contract_ref.as_bytes(), &mut meta_prefix);
        meta_prefix.push(b',');
        write_json_string(META_FIELDS[1].as_bytes(), &mut meta_prefix);
        meta_prefix.push(b':');
        JsonlEncoder {
            meta_prefix,
            fields: plan.fields().iter().map(|f| f.to_string()).collect(),
            edits: Vec::new(),
        }
    }
}

#[inline]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn bad_record(line: u64) -> Error {
    Error::new(
        ErrorKind::Other,
        format!("jsonl encoder: the record of line {line} is not a JSON object"),
    )
}

impl JsonlEncoder {
    /// Writes rows with their edits; `append_meta` adds the `strmMeta` member.
    fn write_rows(
        &mut self,
        batch: &RecordBatch,
        rows: &OutputRows,
        out: &mut Vec<u8>,
        append_meta: bool,
    ) -> Result<()> {
        for i in 0..rows.len() {
            let (record, edits, meta) = rows.row(i);
            if record >= batch.len() {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "jsonl encoder: output row {i} names record {record} of a batch of {}",
                        batch.len()
                    ),
                ));
            }
            let rec = batch.record(record);
            if edits.len() != rec.slots().len() {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "jsonl encoder: output rows have {} slots, records have {}",
                        edits.len(),
                        rec.slots().len()
                    ),
                ));
            }
            let raw = rec.raw();

            // Where the metadata member goes: after the last non-whitespace byte before the
            // object's closing brace (so `{"a":1 }` becomes `{"a":1,"strmMeta":{…} }`).
            let close = raw
                .iter()
                .rposition(|&c| !is_ws(c))
                .filter(|&p| raw[p] == b'}')
                .ok_or_else(|| bad_record(rec.line()))?;
            let last = raw[..close]
                .iter()
                .rposition(|&c| !is_ws(c))
                .ok_or_else(|| bad_record(rec.line()))?;
            let insert_at = last + 1;
            let empty_object = raw[last] == b'{';

            self.edits.clear();
            for (slot, edit) in edits.iter().enumerate() {
                let (a, b, json) = match edit {
                    Edit::Keep => continue,
                    Edit::Text(a, b) => (*a, *b, false),
                    Edit::Json(a, b) => (*a, *b, true),
                };
                if let Slot::Value { span, .. } = rec.slot(slot) {
                    self.edits.push((span.0, span.1, a, b, slot as u32, json));
                }
            }
            if self.edits.len() > 1 {
                // by start; an enclosing value (planned `a` and `a/b`) before what it contains
                self.edits
                    .sort_unstable_by_key(|&(start, end, ..)| (start, Reverse(end)));
            }

            let mut pos = 0usize;
            for &(start, end, a, b, slot, json) in &self.edits {
                let (start, end) = (start as usize, end as usize);
                if start < pos || end < start || end > insert_at {
                    continue; // inside a value already replaced (or not a span of this line)
                }
                let text = rows.edit_text(a, b);
                if std::str::from_utf8(text).is_err() {
                    return Err(Error::new(
                        ErrorKind::Other,
                        format!(
                            "jsonl encoder: the replacement of field '{}' on line {} is not valid UTF-8",
                            self.fields.get(slot as usize).map_or("?", |s| s.as_str()),
                            rec.line()
                        ),
                    ));
                }
                out.extend_from_slice(&raw[pos..start]);
                if json {
                    // one JSON value on one line (checked by `restore_plaintext`)
                    out.extend_from_slice(text);
                } else {
                    write_json_string(text, out);
                }
                pos = end;
            }
            out.extend_from_slice(&raw[pos..insert_at]);
            if append_meta {
                if !empty_object {
                    out.push(b',');
                }
                out.extend_from_slice(&self.meta_prefix);
                out.extend_from_slice(itoa_i64(meta.timestamp_ms).as_bytes());
                out.push(b',');
                write_json_string(META_FIELDS[2].as_bytes(), out);
                out.extend_from_slice(b":\"");
                let mut uuid = [0u8; 36];
                out.extend_from_slice(
                    meta.key_link
                        .hyphenated()
                        .encode_lower(&mut uuid)
                        .as_bytes(),
                );
                out.extend_from_slice(b"\",");
                write_json_string(META_FIELDS[3].as_bytes(), out);
                out.push(b':');
                let levels = rows.text(meta.consent_levels);
                out.extend_from_slice(if levels.is_empty() { b"[]" } else { levels });
                let json_fields = rows.text(meta.json_fields);
                if !json_fields.is_empty() {
                    out.push(b',');
                    write_json_string(JSON_FIELDS.as_bytes(), out);
                    out.push(b':');
                    out.extend_from_slice(json_fields);
                }
                out.push(b'}');
            }
            out.extend_from_slice(&raw[insert_at..]);
            out.push(b'\n');
        }
        Ok(())
    }
}

impl Encoder for JsonlEncoder {
    fn begin_unchanged(&mut self, _out: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    fn encode_unchanged(
        &mut self,
        batch: &RecordBatch,
        record: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.extend_from_slice(batch.record(record).raw());
        out.push(b'\n');
        Ok(())
    }

    fn begin(&mut self, _out: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    fn encode(&mut self, batch: &RecordBatch, rows: &OutputRows, out: &mut Vec<u8>) -> Result<()> {
        self.write_rows(batch, rows, out, true)
    }

    fn encode_edited(
        &mut self,
        batch: &RecordBatch,
        rows: &OutputRows,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.write_rows(batch, rows, out, false)
    }
}

/// Bytes a JSON string cannot hold as they are: `"`, `\` and control characters.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Writes `text` (UTF-8) as a JSON string (RFC 8259): `"` and `\` and control characters
/// escaped, everything else (including non-ASCII) as is.
pub(crate) fn write_json_string(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in text.iter().enumerate() {
        let esc = ESCAPE[c as usize];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&text[start..i]);
        if esc == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}
