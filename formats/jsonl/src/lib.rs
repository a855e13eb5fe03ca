//! The JSON Lines format of keylink: `"data_type": { "jsonl": {} }`.
//!
//! # Input
//!
//! One JSON object per line; lines end with `\n` or `\r\n` (the last line may lack it). Blank
//! (whitespace-only) lines are skipped; a UTF-8 byte order mark at the start of the input is
//! ignored. Line numbers in rejects are 1-based physical lines. The decoder streams: chunks may be
//! cut anywhere, and only the unfinished last line of a chunk is kept for the next one.
//!
//! A record's raw bytes are its line without the terminator. Each planned field is a
//! `/`-separated path of object keys (`customer/id` is `{"customer":{"id":…}}`):
//!
//! | JSON at the path              | slot                                                  |
//! |-------------------------------|-------------------------------------------------------|
//! | a string                      | the unescaped UTF-8 text, [`ValueKind::Text`]         |
//! | a number, boolean, object, array | its exact JSON text, [`ValueKind::Json`]           |
//! | `null`                        | [`Slot::Null`]                                        |
//! | absent, or a parent that is not an object | [`Slot::Missing`]                         |
//!
//! A value's span is the byte range of the JSON value in the line (a string's including its
//! quotes). Paths do not descend into arrays.
//!
//! ## Rejects
//!
//! Rejected lines are not in the batch; their details name columns, fields and JSON types, never
//! values:
//!
//! - bytes that are not UTF-8: [`RejectReason::InvalidUtf8`] (`invalid UTF-8 at column 7`);
//! - everything else is [`RejectReason::BadJson`]: not JSON (`invalid JSON at column 17`,
//!   `unexpected end of JSON at column 40`), JSON followed by more than whitespace
//!   (`trailing characters at column 30`), JSON that is not an object
//!   (`expected a JSON object, found an array`);
//! - a key on a planned path that appears twice in its object (`duplicate key 'customer/id'`,
//!   also for a parent such as `customer`): readers disagree on which copy counts, so one copy of
//!   a personal field could pass unencrypted. Duplicate keys *off* the planned paths are accepted
//!   and copied through untouched (keylink never reads them);
//! - a top-level `strmMeta` key (`reserved key 'strmMeta'`): the encoder adds that key, and the
//!   output must not carry two of them (readers disagree on which wins) nor drop the input's (it
//!   may hold the key links of an earlier run). Such input has been through keylink before;
//! - a planned string holding a lone UTF-16 surrogate escape such as `"\ud800"`, which is not
//!   text (`invalid \u escape (lone surrogate) in field 'Email'`). Elsewhere in the line such an
//!   escape is accepted, as serde_json's validation does.
//!
//! # Output
//!
//! Each output row is its input line, byte for byte (whitespace, key order, number formatting,
//! escapes), except that
//!
//! - every planned value with an [`Edit::Text`] is replaced by that text as a JSON string
//!   (escaping `"`, `\` and control characters only). A non-string value (number, boolean,
//!   object, array) is replaced by a string too: the transform receives its JSON text (for
//!   example `42` or `{"a":1}`) and the output holds the encrypted or masked text of it, so
//!   `"age":42` becomes `"age":"AZ3v…"`. A value with an [`Edit::Json`] is replaced by that JSON
//!   as it is (a decrypted non-string value: `"age":42` again). Null and missing values have no
//!   span and stay as they are. When a planned object and a field inside it are both replaced,
//!   the object's replacement wins;
//! - the member `"strmMeta":{"eventContractRef":…,"timestamp":…,"keyLink":…,"consentLevels":…}`
//!   is inserted before the object's closing brace (after any whitespace, which stays before it).
//!   When the row's [`RowMeta::json_fields`] is not empty, `"jsonFields":["age",…]` follows
//!   `consentLevels`: the PII fields whose source value was JSON other than a string, so that a
//!   later `keylink decrypt` restores them as JSON (their plaintext is JSON text) and strings as
//!   strings (a string `"42"` and a number `42` encrypt the same text);
//! - the line ends with `\n`.
//!
//! # Example
//!
//! ```
//! use keylink_core::format::{FormatConfig, write_levels};
//! use keylink_core::record::{FieldPlan, OutputRows, RecordBatch, RowMeta, ValueKind};
//! use keylink_core::reject::Rejects;
//! use keylink_format_jsonl::JsonlConfig; // links the `jsonl` registration
//!
//! # let _ = JsonlConfig::default();
//! let config: Box<dyn FormatConfig> = serde_json::from_str(r#"{"jsonl":{}}"#).unwrap();
//! config.validate().unwrap();
//! let format = config.build().unwrap();
//! assert_eq!(format.name(), "jsonl");
//!
//! let mut plan = FieldPlan::new();
//! let email = plan.slot("Email", false);
//! let id = plan.slot("customer/id", true);
//!
//! // decode, in chunks cut anywhere
//! let input = b"{\"Email\":\"a@b.c\", \"customer\":{\"id\":42}}\r\n[1]\n";
//! let mut decoder = format.decoder(&plan);
//! let (mut batch, mut rejects) = (RecordBatch::new(plan.len()), Rejects::new(false));
//! decoder.decode(&input[..13], &mut batch, &mut rejects).unwrap();
//! decoder.decode(&input[13..], &mut batch, &mut rejects).unwrap();
//! decoder.finish(&mut batch, &mut rejects).unwrap();
//! assert_eq!(batch.len(), 1);
//! let record = batch.record(0);
//! assert_eq!(record.value(email), Some(&b"a@b.c"[..]));
//! assert_eq!(record.value(id), Some(&b"42"[..]));
//! assert_eq!(rejects.items()[0].line, 2);
//! assert_eq!(rejects.items()[0].detail, "expected a JSON object, found an array");
//!
//! // encode with Email replaced
//! let layout = decoder.layout().unwrap();
//! let mut encoder = format.encoder(&plan, &layout, "acme/events/1.0.0").unwrap();
//! let mut rows = OutputRows::new(plan.len());
//! let mut levels = Vec::new();
//! write_levels(&[1, 2], &mut levels);
//! let consent_levels = rows.push_text(&levels);
//! let key_link = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
//! let json_fields = (0, 0); // no non-string PII field
//! rows.push_row(0, RowMeta { timestamp_ms: 1700000000000, key_link, consent_levels, json_fields });
//! let start = rows.values_len();
//! rows.values_mut().extend_from_slice(b"ATx9");
//! rows.replace_from(email, start);
//!
//! let mut out = Vec::new();
//! encoder.begin(&mut out).unwrap();
//! encoder.encode(&batch, &rows, &mut out).unwrap();
//! assert_eq!(
//!     String::from_utf8(out).unwrap(),
//!     "{\"Email\":\"ATx9\", \"customer\":{\"id\":42},\"strmMeta\":{\
//!      \"eventContractRef\":\"acme/events/1.0.0\",\"timestamp\":1700000000000,\
//!      \"keyLink\":\"67e55044-10b1-426f-9247-bb680e5fe0c8\",\"consentLevels\":[1,2]}}\n"
//! );
//! ```
//!
//! # Implementation
//!
//! Lines are validated and searched in a single pass by a hand-written, non-recursive scanner
//! that accepts exactly what `serde_json` accepts when it validates a line without building it
//! (tested against it). It allocates nothing per line once its buffers are warm, and the encoder
//! writes straight into the output buffer.
//!
//! [`ValueKind::Text`]: keylink_core::record::ValueKind::Text
//! [`ValueKind::Json`]: keylink_core::record::ValueKind::Json
//! [`Slot::Null`]: keylink_core::record::Slot::Null
//! [`Slot::Missing`]: keylink_core::record::Slot::Missing
//! [`Edit::Text`]: keylink_core::record::Edit::Text
//! [`Edit::Json`]: keylink_core::record::Edit::Json
//! [`RowMeta::json_fields`]: keylink_core::record::RowMeta::json_fields
//! [`RejectReason::InvalidUtf8`]: keylink_core::reject::RejectReason::InvalidUtf8
//! [`RejectReason::BadJson`]: keylink_core::reject::RejectReason::BadJson
#![deny(missing_docs)]

mod decode;
mod encode;
mod scan;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use keylink_core::format::{Decoder, Encoder, Format, FormatConfig, Layout};
use keylink_core::{FieldPlan, Result, typetag};
use serde::{Deserialize, Serialize};

/// The configuration of the JSON Lines format: `"data_type": { "jsonl": {} }`.
///
/// It has no settings yet: input is always UTF-8 with one object per line, and output always
/// `\n`-terminated lines. Unknown settings are rejected, so that settings added later (say a
/// maximum line length) are not silently ignored by older versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::Format,
    name: "jsonl",
    description: "JSON Lines: one JSON object per line (nested PII fields as a/b)",
    example: r#"{ "jsonl": {} }"#,
    schemes: &[],
    from_url: None,
    schema: keylink_core::schema::of::<JsonlConfig>,
});

#[typetag::serde(name = "jsonl")]
impl FormatConfig for JsonlConfig {
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    fn build(&self) -> Result<Arc<dyn Format>> {
        Ok(Arc::new(JsonlFormat::new()))
    }
}

/// The running JSON Lines format (see the [crate documentation](crate)).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonlFormat {}

impl JsonlFormat {
    /// The format.
    pub fn new() -> Self {
        JsonlFormat {}
    }
}

impl Format for JsonlFormat {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn decoder(&self, plan: &FieldPlan) -> Box<dyn Decoder> {
        Box::new(decode::JsonlDecoder::new(plan))
    }

    /// The layout is not needed: every line carries its own keys.
    fn encoder(
        &self,
        plan: &FieldPlan,
        _layout: &Layout,
        contract_ref: &str,
    ) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(encode::JsonlEncoder::new(plan, contract_ref)))
    }
}
