//! The keys export (SPEC §2): a CSV table `keyLink,encryptionKey,policyId,expiresAt`, one row
//! per key, where `encryptionKey` is the Tink JSON keyset holding the key (so stock Tink decrypts
//! with it).
//!
//! Its shape is fixed by the spec whatever the job's data format. Its rows are made here, once,
//! for every writer of keys (batch jobs, `keylink keys export`, the stream keys exporter), and
//! written by a format's [`TableEncoder`]: the registered `csv` format ([`keys_format`]), so the
//! CSV rules (quoting) live in one place, the csv crate.

use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use crate::crypto::tink::{KEYSET_JSON_LEN_MAX, keyset_json_into};
use crate::error::{Error, Result};
use crate::format::{Format, FormatConfig, TableEncoder};
use crate::keystore::DataKey;

/// The columns of the keys export.
pub const KEYS_COLUMNS: [&str; 4] = ["keyLink", "encryptionKey", "policyId", "expiresAt"];

/// The format of a keys export: `given` (its target's `data_type`, which must be csv), else the
/// registered `csv` format with its defaults. It is checked to write the keys table, so that a
/// job that could not write its keys is refused before any data is read; a binary built without
/// csv cannot write keys, and says so.
pub fn keys_format(given: Option<Arc<dyn Format>>) -> Result<Arc<dyn Format>> {
    let format = match given {
        Some(f) if f.name() != "csv" => {
            return Err(Error::config(format!(
                "the keys export is always CSV, found {}",
                f.name()
            )));
        }
        Some(f) => f,
        None => {
            let config: Box<dyn FormatConfig> =
                serde_json::from_value(serde_json::json!({ "csv": {} })).map_err(|_| {
                    Error::not_supported(
                        "the keys export is a CSV table (SPEC §2), and this build of keylink \
                         has no csv format",
                    )
                })?;
            config.build()?
        }
    };
    KeysWriter::new(format.as_ref())?;
    Ok(format)
}

/// Writes keys as rows of a keys export, with one encoder for the whole output.
pub struct KeysWriter {
    table: Box<dyn TableEncoder>,
    /// A row's keyset JSON (the key in clear), zeroized after every row.
    keyset: Zeroizing<Vec<u8>>,
}

impl KeysWriter {
    /// A writer in `format` (a format that cannot write a table is refused here).
    pub fn new(format: &dyn Format) -> Result<Self> {
        let table = format.table_encoder(&KEYS_COLUMNS).map_err(|e| {
            e.context(format!(
                "the keys export is a table of {} columns",
                KEYS_COLUMNS.len()
            ))
        })?;
        Ok(KeysWriter {
            table,
            keyset: Zeroizing::new(Vec::with_capacity(KEYSET_JSON_LEN_MAX)),
        })
    }

    /// A writer in the default [`keys_format`].
    pub fn csv() -> Result<Self> {
        Self::new(keys_format(None)?.as_ref())
    }

    /// Writes the header.
    pub fn begin(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.table.begin(out)
    }

    /// Writes the row of key `k`, made for `policy_id`.
    pub fn write(&mut self, k: &DataKey, policy_id: &str, out: &mut Vec<u8>) -> Result<()> {
        let mut link = uuid::Uuid::encode_buffer();
        let link = k.key_link.hyphenated().encode_lower(&mut link);
        keyset_json_into(&k.material, k.key_id, &mut self.keyset);
        let written = self.table.row(
            &[
                link.as_bytes(),
                &self.keyset,
                policy_id.as_bytes(),
                crate::format::itoa_i64(k.expires_at_ms).as_bytes(),
            ],
            out,
        );
        self.keyset.zeroize();
        written
    }
}

impl std::fmt::Debug for KeysWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysWriter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyMaterial;
    use crate::format::{Decoder, Encoder, Layout};
    use crate::record::FieldPlan;

    /// A format that writes a table as `|`-separated values, to see what the writer gives it.
    #[derive(Debug)]
    struct Pipes;

    struct PipeTable;

    impl TableEncoder for PipeTable {
        fn begin(&mut self, out: &mut Vec<u8>) -> Result<()> {
            out.extend_from_slice(KEYS_COLUMNS.join("|").as_bytes());
            out.push(b'\n');
            Ok(())
        }

        fn row(&mut self, values: &[&[u8]], out: &mut Vec<u8>) -> Result<()> {
            out.extend_from_slice(&values.join(&b'|'));
            out.push(b'\n');
            Ok(())
        }
    }

    impl Format for Pipes {
        fn name(&self) -> &'static str {
            "pipes"
        }
        fn decoder(&self, _: &FieldPlan) -> Box<dyn Decoder> {
            unimplemented!("not used")
        }
        fn encoder(&self, _: &FieldPlan, _: &Layout, _: &str) -> Result<Box<dyn Encoder>> {
            unimplemented!("not used")
        }
        fn table_encoder(&self, columns: &[&str]) -> Result<Box<dyn TableEncoder>> {
            assert_eq!(columns, KEYS_COLUMNS);
            Ok(Box::new(PipeTable))
        }
    }

    /// A format without tables (the trait's default).
    #[derive(Debug)]
    struct NoTables;

    impl Format for NoTables {
        fn name(&self) -> &'static str {
            "notables"
        }
        fn decoder(&self, _: &FieldPlan) -> Box<dyn Decoder> {
            unimplemented!("not used")
        }
        fn encoder(&self, _: &FieldPlan, _: &Layout, _: &str) -> Result<Box<dyn Encoder>> {
            unimplemented!("not used")
        }
    }

    #[test]
    fn a_row_holds_the_link_the_tink_keyset_the_policy_and_the_expiry() {
        let material = KeyMaterial::generate().unwrap();
        let key = DataKey {
            key_link: uuid::Uuid::new_v4(),
            key_id: 7,
            material,
            window_start_ms: 0,
            expires_at_ms: 86_400_000,
        };
        let mut w = KeysWriter::new(&Pipes).unwrap();
        let mut out = Vec::new();
        w.begin(&mut out).unwrap();
        w.write(&key, "po,licy", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "keyLink|encryptionKey|policyId|expiresAt");
        let fields: Vec<&str> = lines[1].split('|').collect();
        assert_eq!(fields.len(), 4, "{fields:?}");
        assert_eq!(fields[0], key.key_link.hyphenated().to_string());
        let (id, parsed) = crate::crypto::tink::parse_keyset_json(fields[1]).unwrap();
        assert_eq!(id, 7);
        assert_eq!(parsed.expose(), key.material.expose());
        assert_eq!(fields[2], "po,licy");
        assert_eq!(fields[3], "86400000");
    }

    #[test]
    fn a_format_without_tables_cannot_write_keys() {
        let e = KeysWriter::new(&NoTables).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NotSupported, "{e}");
        assert!(e.to_string().contains("notables"), "{e}");
    }

    /// core's own tests link no format: the default keys format is missing, and said to be.
    #[test]
    fn without_a_csv_format_the_keys_export_is_refused() {
        let e = keys_format(None).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NotSupported, "{e}");
        assert!(
            e.to_string().contains(
                "no csv \
                 format"
            ),
            "{e}"
        );
    }
}
