//! The CSV format of keylink: `"data_type": { "csv": { "charset": "UTF-8" } }`.
//!
//! - [`CsvConfig`] is the configuration, registered with `typetag` as the format `csv`.
//! - [`CsvFormat`] is the running format. Its [`CsvDecoder`] reads RFC 4180 CSV in chunks cut
//!   anywhere (inside a quoted field, a CRLF or a UTF-8 character) without buffering the input; its
//!   [`CsvEncoder`] writes the records back with the privacy transform's edits applied and the
//!   `strmMeta` columns appended.
//!
//! Reading rules:
//!
//! - The first record is the header; it is required, must be UTF-8 and must not repeat a name.
//!   A UTF-8 byte order mark at the very start of the input is dropped.
//! - Records end at LF, CRLF or a lone CR. Blank lines are skipped. Line numbers are 1-based,
//!   count LF bytes (CRLF counts once), and name the line a record *starts* on.
//! - A field is quoted when it starts with `"`; `""` inside it is one quote. Like the csv crate,
//!   the reader is lenient elsewhere: a `"` inside an unquoted field is an ordinary byte, and text
//!   after a closing quote is appended to the field.
//! - Bad records are rejected, not errors: a wrong number of fields
//!   ([`RejectReason::WrongColumnCount`]), a field that is not UTF-8
//!   ([`RejectReason::InvalidUtf8`]), a quoted field still open at the end of the input
//!   ([`RejectReason::BadCsv`]), a record larger than [`MAX_RECORD_BYTES`] (64 MiB of source)
//!   ([`RejectReason::RecordTooLarge`]; its bytes are dropped as they are read, so not even a
//!   `rejected_data` target gets them, and the records after it are read as usual). A reject's
//!   detail names counts and column names only. A header larger than the limit fails the object.
//!
//! Writing quotes a field only when it contains the delimiter, `"`, CR or LF, doubles `"`, and
//! ends every row with LF.
//!
//! ```
//! use keylink_core::format::{FormatConfig, Layout};
//! use keylink_core::record::{FieldPlan, OutputRows, RecordBatch, RowMeta};
//! use keylink_core::reject::Rejects;
//! use keylink_format_csv::CsvConfig;
//!
//! // `CsvConfig` is registered as `csv` (typetag needs this crate linked: name it somewhere).
//! assert_eq!(CsvConfig::default().delimiter_byte().unwrap(), b',');
//! let config: Box<dyn FormatConfig> =
//!     serde_json::from_str(r#"{ "csv": { "charset": "UTF-8" } }"#).unwrap();
//! config.validate().unwrap();
//! let format = config.build().unwrap();
//!
//! let mut plan = FieldPlan::new();
//! let email = plan.slot("email", true);
//!
//! // Decode, in chunks cut anywhere.
//! let mut decoder = format.decoder(&plan);
//! let mut batch = RecordBatch::new(plan.len());
//! let mut rejects = Rejects::new(false);
//! decoder.decode(b"id,email\n1,a@x.org\n2,\"b,", &mut batch, &mut rejects).unwrap();
//! decoder.decode(b"c\"@x.org\n", &mut batch, &mut rejects).unwrap();
//! decoder.finish(&mut batch, &mut rejects).unwrap();
//! assert_eq!(batch.len(), 2);
//! assert_eq!(batch.record(1).value(email), Some(&b"b,c@x.org"[..]));
//!
//! // Encode with the email of the first record replaced.
//! let layout = decoder.layout().unwrap();
//! assert_eq!(layout, Layout { columns: Some(vec!["id".into(), "email".into()]) });
//! let mut encoder = format.encoder(&plan, &layout, "acme/clicks/1.0.0").unwrap();
//! let mut rows = OutputRows::new(plan.len());
//! for i in 0..batch.len() {
//!     let consent_levels = rows.push_text(b"[1,2]");
//!     let key_link = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
//!     let meta = RowMeta {
//!         timestamp_ms: 1700000000000,
//!         key_link,
//!         consent_levels,
//!         json_fields: (0, 0),
//!     };
//!     rows.push_row(i, meta);
//!     if i == 0 {
//!         let start = rows.values_len();
//!         rows.values_mut().extend_from_slice(b"AXDF2");
//!         rows.replace_from(email, start);
//!     }
//! }
//! let mut out = Vec::new();
//! encoder.begin(&mut out).unwrap();
//! encoder.encode(&batch, &rows, &mut out).unwrap();
//! assert_eq!(
//!     String::from_utf8(out).unwrap(),
//!     "id,email,strmMeta.eventContractRef,strmMeta.timestamp,strmMeta.keyLink,strmMeta.consentLevels\n\
//!      1,AXDF2,acme/clicks/1.0.0,1700000000000,67e55044-10b1-426f-9247-bb680e5fe0c8,\"[1,2]\"\n\
//!      2,\"b,c@x.org\",acme/clicks/1.0.0,1700000000000,67e55044-10b1-426f-9247-bb680e5fe0c8,\"[1,2]\"\n"
//! );
//! ```
#![deny(missing_docs)]

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use keylink_core::format::{Decoder, Encoder, Format, FormatConfig, Layout, TableEncoder};
use keylink_core::record::FieldPlan;
use keylink_core::typetag;
use keylink_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub use decode::{CsvDecoder, MAX_RECORD_BYTES};
pub use encode::{CsvEncoder, CsvTableEncoder};

#[cfg(doc)]
use keylink_core::reject::RejectReason;

/// The configuration of the CSV format: `{ "csv": { "charset": "UTF-8" } }`. Every setting is
/// optional; `{ "csv": {} }` reads and writes comma-separated UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// The character set of the files. Only UTF-8 is supported (`UTF-8`, `utf-8` or `utf8`);
    /// the default is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charset: Option<String>,
    /// The field delimiter, one ASCII character other than `"`, CR and LF (a keylink extension).
    /// The default is `,`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
}

impl CsvConfig {
    /// The delimiter as a byte, after checking it.
    pub fn delimiter_byte(&self) -> Result<u8> {
        match self.delimiter {
            None => Ok(b','),
            Some(c @ ('"' | '\r' | '\n')) => Err(Error::config(format!(
                "csv.delimiter {c:?} is not allowed: it must not be a quote, CR or LF"
            ))),
            Some(c) if c.is_ascii() => Ok(c as u8),
            Some(c) => Err(Error::config(format!(
                "csv.delimiter {c:?} is not allowed: it must be a single ASCII character"
            ))),
        }
    }
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::Format,
    name: "csv",
    description: "CSV with a header row (delimiter, quote and charset configurable)",
    example: r#"{ "csv": { "charset": "UTF-8" } }"#,
    schemes: &[],
    from_url: None,
    schema: keylink_core::schema::of::<CsvConfig>,
});

#[typetag::serde(name = "csv")]
impl FormatConfig for CsvConfig {
    fn validate(&self) -> Result<()> {
        if let Some(charset) = &self.charset {
            let ok = charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8");
            if !ok {
                return Err(Error::not_supported(format!(
                    "charset '{charset}' is not supported; only UTF-8"
                )));
            }
        }
        self.delimiter_byte()?;
        Ok(())
    }

    fn build(&self) -> Result<Arc<dyn Format>> {
        self.validate()?;
        Ok(Arc::new(CsvFormat::new(self.delimiter_byte()?)))
    }
}

/// The running CSV format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvFormat {
    delimiter: u8,
}

impl Default for CsvFormat {
    fn default() -> Self {
        CsvFormat { delimiter: b',' }
    }
}

impl CsvFormat {
    /// A format with field delimiter `delimiter` (checked by [`CsvConfig::validate`]; it must be
    /// ASCII and not `"`, CR or LF).
    pub fn new(delimiter: u8) -> Self {
        debug_assert!(delimiter.is_ascii() && !matches!(delimiter, b'"' | b'\r' | b'\n'));
        CsvFormat { delimiter }
    }

    /// The field delimiter.
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }
}

impl Format for CsvFormat {
    fn name(&self) -> &'static str {
        "csv"
    }

    fn decoder(&self, plan: &FieldPlan) -> Box<dyn Decoder> {
        Box::new(CsvDecoder::new(plan, self.delimiter))
    }

    fn encoder(
        &self,
        plan: &FieldPlan,
        layout: &Layout,
        contract_ref: &str,
    ) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(CsvEncoder::new(
            plan,
            layout,
            contract_ref,
            self.delimiter,
        )?))
    }

    fn table_encoder(&self, columns: &[&str]) -> Result<Box<dyn TableEncoder>> {
        Ok(Box::new(CsvTableEncoder::new(columns, self.delimiter)))
    }
}
