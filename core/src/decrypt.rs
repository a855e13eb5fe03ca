//! `keylink decrypt`: a derived dataset made later, from an encrypted dataset and a keys export,
//! with the same consent, purpose and masking semantics as a job's `derived_data` (SPEC §5).
//!
//! Every encrypted row carries its key link and consent levels (`strmMeta`). A row whose key link
//! is not in the keys export cannot be decrypted — its key was never exported, or was deleted
//! (crypto-shredding) — and is counted, never guessed; so is a row whose ciphertext does not
//! decrypt under its key. The output keeps the input's columns, metadata included, with the
//! requested purposes' PII decrypted (or masked) and everything else as it was.
//!
//! It runs on the job pipeline (`engine::run_pipeline`): the input is cut into pieces between
//! records, which are decoded and decrypted on every core, and written in input order.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::buffer_pool::{Batches, Kept, OutputBuffers, Pooling};
use crate::connector::{ObjectLocation, Sink, Source};
use crate::consent::parse_levels;
use crate::contract::DataContract;
use crate::crypto::KeyMaterial;
use crate::crypto::tink::{DeterministicAead, parse_keyset_json};
use crate::derive::{DerivedPlan, PiiTreatment, restore_plaintext};
use crate::encoder_pool::EncoderPool;
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job::{ConsentLevelType, MaskedFields, PatternList};
use crate::record::{FieldPlan, OutputRows, RecordBatch, RowMeta, ValueKind};
use crate::reject::{RejectReason, Rejects};
use crate::safety::{NamedField, Place, check_header, check_locations, contract_fields, is_glob};
use crate::summary::InputSummary;

/// An object on a connector.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store.
    pub source: Option<Arc<dyn Source>>,
    /// The store, for writing.
    pub sink: Option<Arc<dyn Sink>>,
    /// The object path.
    pub path: String,
    /// Where the object really is, to refuse an output that is an input (SPEC §8).
    pub id: ObjectLocation,
}

/// What to derive.
#[derive(Debug)]
pub struct DecryptRequest {
    /// The contract the encrypted dataset was made under.
    pub contract: DataContract,
    /// The purposes (consent levels) the output is for.
    pub purposes: Vec<i32>,
    /// How record consent is compared with the purposes.
    pub kind: ConsentLevelType,
    /// Fields to mask (exact names or globs).
    pub mask: Vec<String>,
    /// The masking seed (required when `mask` is not empty).
    pub seed: Option<crate::Sensitive<String>>,
}

/// What a decrypt run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DecryptSummary {
    /// Keys loaded from the export.
    pub keys_loaded: u64,
    /// The input's counts; rows without a usable key are rejects with reason `unknown_key` or
    /// `undecryptable`.
    pub input: InputSummary,
    /// Rows written.
    pub rows_written: u64,
    /// Rows left out because their consent does not cover the purposes.
    pub rows_without_consent: u64,
    /// The object written.
    pub output: String,
}

/// The metadata field names of an encrypted dataset in `format` (CSV columns or JSON paths).
fn meta_fields(format: &dyn Format) -> (&'static str, &'static str) {
    if format.name() == "csv" {
        ("strmMeta.keyLink", "strmMeta.consentLevels")
    } else {
        ("strmMeta/keyLink", "strmMeta/consentLevels")
    }
}

/// The metadata field listing the PII fields whose plaintext is JSON text (see
/// [`RowMeta::json_fields`]); formats without JSON values have none.
fn json_fields_meta(format: &dyn Format) -> Option<&'static str> {
    (format.name() != "csv").then_some("strmMeta/jsonFields")
}

/// The keys of a keys export, by key link: one array sorted by link, with a
/// directory (`link_index::Directory`) on the links' first 16 bits. 84 bytes a key
/// (`KeyEntry`) plus the directory's 256 KiB: a `HashMap` of the same entries took ~2.5 times
/// that (10M rows, 953k keys: `decrypt` peaked at 280 MB; 130 MB with a sorted array of 96-byte
/// entries).
pub struct KeyTable {
    /// Sorted by key link, one entry per link.
    keys: Vec<KeyEntry>,
    directory: crate::link_index::Directory,
}

/// One key of a [`KeyTable`]. The link is kept as bytes: as a `u128` it would align the entry
/// to 16 bytes, and 12 of every 96 would be padding.
struct KeyEntry {
    /// The key link, big-endian (the order of [`Uuid::as_u128`]).
    link: [u8; 16],
    /// The Tink key id.
    key_id: u32,
    key: KeyMaterial,
}

const _: () = assert!(std::mem::size_of::<KeyEntry>() == 84);

impl KeyEntry {
    fn new(link: u128, key_id: u32, key: KeyMaterial) -> Self {
        KeyEntry {
            link: link.to_be_bytes(),
            key_id,
            key,
        }
    }

    fn link(&self) -> u128 {
        u128::from_be_bytes(self.link)
    }
}

impl KeyTable {
    /// The table of `keys`. A link given twice with the same key counts once; with two
    /// different keys it is an error (which one encrypted the data cannot be known).
    fn new(mut keys: Vec<KeyEntry>, shown: &str) -> Result<Self> {
        keys.sort_unstable_by_key(KeyEntry::link);
        let mut conflict = None;
        keys.dedup_by(|b, a| {
            let same_link = a.link == b.link;
            if same_link && (a.key_id != b.key_id || a.key.expose() != b.key.expose()) {
                conflict = Some(a.link());
            }
            same_link
        });
        if let Some(link) = conflict {
            return Err(Error::data(format!(
                "{shown}: key link {} is given twice, with different keys",
                Uuid::from_u128(link)
            )));
        }
        let directory = crate::link_index::Directory::new(keys.iter().map(KeyEntry::link));
        Ok(KeyTable { keys, directory })
    }

    /// The Tink key id and the key of `link`.
    pub fn get(&self, link: &Uuid) -> Option<(u32, &KeyMaterial)> {
        let link = link.as_u128();
        let run = &self.keys[self.directory.run(link)];
        let i = run.binary_search_by_key(&link, KeyEntry::link).ok()?;
        Some((run[i].key_id, &run[i].key))
    }

    /// Keys in the table.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Loads a keys export (`keyLink,encryptionKey,policyId,expiresAt`, CSV).
pub async fn load_keys(keys: &Location, csv: &dyn Format) -> Result<KeyTable> {
    let source = keys.source.as_ref().expect("a readable location");
    let shown = source.describe(&keys.path);
    let mut plan = FieldPlan::new();
    let link_slot = plan.slot("keyLink", true);
    let key_slot = plan.slot("encryptionKey", true);
    let mut decoder = csv.decoder(&plan);
    let mut batch = RecordBatch::new(plan.len());
    let mut rejects = Rejects::new(false);
    let mut out: Vec<KeyEntry> = Vec::new();
    let mut reader = source.open(&keys.path).await?;
    let mut take = |batch: &mut RecordBatch| -> Result<()> {
        for rec in batch.records() {
            let line = rec.line();
            let link = rec
                .value(link_slot)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| Uuid::parse_str(v).ok())
                .ok_or_else(|| {
                    Error::data(format!("{shown}: line {line}: keyLink is not a UUID"))
                })?;
            let json = rec
                .value(key_slot)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or_else(|| Error::data(format!("{shown}: line {line}: no encryptionKey")))?;
            let (key_id, material) = parse_keyset_json(json)
                .map_err(|e| e.context(format!("{shown}: line {line}: encryptionKey")))?;
            out.push(KeyEntry::new(link.as_u128(), key_id, material));
        }
        batch.clear();
        Ok(())
    };
    while let Some(chunk) = reader.read_chunk().await? {
        decoder.decode(&chunk, &mut batch, &mut rejects)?;
        take(&mut batch)?;
    }
    decoder.finish(&mut batch, &mut rejects)?;
    take(&mut batch)?;
    if let Some(r) = rejects.items().first() {
        return Err(Error::data(format!(
            "{shown}: line {}: {} ({})",
            r.line, r.detail, r.reason
        )));
    }
    KeyTable::new(out, &shown)
}

/// Derives `output` from the encrypted dataset at `input` with the keys at `keys`. `also_read`
/// names other objects the command reads (the contract, the seed file): the output may be none of
/// them, nor the input or the keys export.
pub async fn decrypt(
    request: &DecryptRequest,
    input: &Location,
    keys: &Location,
    output: &Location,
    also_read: &[Place],
    format: Arc<dyn Format>,
    csv: &dyn Format,
) -> Result<DecryptSummary> {
    let source = input.source.as_ref().expect("a readable location");
    let sink = output.sink.as_ref().expect("a writable location");
    let contract_ref = request.contract.contract_ref.to_string();
    let mut reads = vec![
        Place {
            role: "--input".into(),
            location: input.id.clone(),
        },
        Place {
            role: "--keys".into(),
            location: keys.id.clone(),
        },
    ];
    reads.extend_from_slice(also_read);
    check_locations(
        &[Place {
            role: "--output".into(),
            location: output.id.clone(),
        }],
        &reads,
        None,
    )?;
    // the input's header must have the contract's fields and every --mask name (SPEC §8)
    let described = source.describe(&input.path);
    let header = crate::engine::peek_layout(source.as_ref(), &input.path, format.as_ref())
        .await
        .map_err(|e| e.context(described.clone()))?
        .columns;
    // the plan: PII, metadata, masked fields
    let mut fields = FieldPlan::new();
    let (link_name, levels_name) = meta_fields(format.as_ref());
    let link_slot = fields.slot(link_name, true);
    let levels_slot = fields.slot(levels_name, true);
    let json_slot = json_fields_meta(format.as_ref()).map(|f| fields.slot(f, false));
    let pii: Vec<(usize, i32)> = request
        .contract
        .pii_fields
        .iter()
        .map(|p| (fields.slot(&p.field, false), p.purpose_level))
        .collect();
    let universe: Vec<String> = match (&request.contract.schema_fields, header.clone()) {
        (Some(f), _) => f.clone(),
        (None, Some(columns)) => columns,
        (None, None) => request
            .contract
            .pii_fields
            .iter()
            .map(|p| p.field.clone())
            .collect(),
    };
    let masked = (!request.mask.is_empty()).then(|| MaskedFields {
        hash_type: None,
        seed: request.seed.clone(),
        field_patterns: [(
            contract_ref.clone(),
            PatternList {
                field_patterns: request.mask.clone(),
            },
        )]
        .into_iter()
        .collect(),
    });
    let derived = DerivedPlan::new(
        "keylink decrypt",
        &request.purposes,
        request.kind,
        masked.as_ref(),
        &request.contract,
        &universe,
        &mut fields,
    )?;
    // after the plan, so that errors of the settings themselves (a missing seed) come first
    if let Some(columns) = &header {
        let mut named = contract_fields(&request.contract);
        let mut globs = Vec::new();
        for (i, m) in request.mask.iter().enumerate() {
            if is_glob(m) {
                globs.push((m.clone(), format!("--mask[{i}]")));
            } else {
                named.push(NamedField {
                    field: m.clone(),
                    setting: format!("--mask ({m})"),
                });
            }
        }
        check_header(&described, columns, &named, &globs, false)?;
    }

    let is_pii: Vec<bool> = (0..fields.len())
        .map(|s| pii.iter().any(|(p, _)| *p == s))
        .collect();

    let key_table = load_keys(keys, csv).await?;
    let mut summary = DecryptSummary {
        keys_loaded: key_table.len() as u64,
        output: sink.describe(&output.path),
        input: InputSummary {
            object: source.describe(&input.path),
            ..Default::default()
        },
        ..Default::default()
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // two batches per core: one being decrypted, one waiting to be written
    let in_flight = 2 * cores;
    let plan = Arc::new(Plan {
        format: format.clone(),
        contract_ref,
        link_name,
        link_slot,
        levels_slot,
        json_slot,
        pii,
        is_pii,
        derived,
        key_table,
        batches: Batches::new(in_flight + 2, fields.len()),
        rows: Kept::new(cores),
        encoders: EncoderPool::new(cores),
        // decrypted records are personal data like a job's derived outputs, whose buffers are
        // kept the same way (emptied, not zeroized)
        buffers: OutputBuffers::new([Pooling::Kept], in_flight + 2),
        fields,
    });

    let mut writer = sink.create_private(&output.path).await?;
    let batch_plan = plan.clone();
    let result: Result<()> = async {
        let reader = source.open(&input.path).await?;
        let work_plan = plan.clone();
        let mut header_written = false;
        crate::engine::run_pipeline(
            crate::engine::Pipeline {
                reader,
                format: format.clone(),
                fields: &plan.fields,
                keep_raw: false,
                in_flight,
                described: summary.input.object.clone(),
            },
            move || batch_plan.batches.take(),
            move |input: crate::engine::BatchInput, layout, _bytes| {
                let plan = work_plan.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let (batch, rejects) = input.decode()?;
                        plan.decrypt_batch(batch, rejects, layout)
                    })
                    .await
                    .map_err(|e| {
                        Error::new(crate::ErrorKind::Other, format!("a worker failed: {e}"))
                    })?
                }
            },
            async |done: Decrypted| {
                if !header_written && let Some(layout) = &done.layout {
                    let mut head = Vec::new();
                    plan.format
                        .encoder(&plan.fields, layout, &plan.contract_ref)?
                        .begin_unchanged(&mut head)?;
                    header_written = true;
                    if !head.is_empty() {
                        writer.write(Bytes::from(head)).await?;
                    }
                }
                summary.rows_written += done.rows_written;
                summary.rows_without_consent += done.without_consent;
                summary.input.rows_read += done.rows_read;
                summary.input.rows_accepted += done.accepted;
                summary.input.add_rejects(&done.rejects);
                if !done.bytes.is_empty() {
                    writer.write(plan.buffers.bytes(0, done.bytes)).await?;
                }
                Ok(())
            },
        )
        .await?;
        writer.finish().await
    }
    .await;
    match result {
        Ok(()) => {
            writer.commit().await?;
            Ok(summary)
        }
        Err(e) => {
            let _ = writer.abort().await;
            Err(e.context(summary.input.object.clone()))
        }
    }
}

/// Everything a batch needs to be decrypted, shared by the pipeline's workers.
struct Plan {
    format: Arc<dyn Format>,
    contract_ref: String,
    link_name: &'static str,
    link_slot: usize,
    levels_slot: usize,
    json_slot: Option<usize>,
    /// PII slots and their purpose levels.
    pii: Vec<(usize, i32)>,
    is_pii: Vec<bool>,
    derived: DerivedPlan,
    key_table: KeyTable,
    fields: FieldPlan,
    /// What a batch is built in, kept between batches (issue #8: no per-batch rebuilding): the
    /// decoded records, the rows' edits, the encoder, the output buffer.
    batches: Batches,
    rows: Kept<OutputRows>,
    encoders: EncoderPool,
    buffers: OutputBuffers,
}

/// What one batch became.
struct Decrypted {
    bytes: Vec<u8>,
    layout: Option<Arc<crate::format::Layout>>,
    rows_written: u64,
    without_consent: u64,
    rows_read: u64,
    accepted: u64,
    rejects: Vec<crate::reject::Reject>,
}

impl Plan {
    /// Decrypts what the batch's rows' purposes allow and encodes the rows (the input's own
    /// columns, as they were otherwise).
    fn decrypt_batch(
        &self,
        batch: RecordBatch,
        mut rejects: Rejects,
        layout: Option<Arc<crate::format::Layout>>,
    ) -> Result<Decrypted> {
        // every reject so far is the decoder's
        let decoder_rejects = rejects.len() as u64;
        let mut out = Decrypted {
            bytes: self.buffers.take(0),
            layout: layout.clone(),
            rows_written: 0,
            without_consent: 0,
            rows_read: batch.len() as u64 + decoder_rejects,
            accepted: 0,
            rejects: Vec::new(),
        };
        let Some(layout) = layout else {
            if !batch.is_empty() {
                return Err(Error::new(
                    crate::ErrorKind::Other,
                    "records were decoded before the input's layout was known",
                ));
            }
            out.rejects = rejects.drain().0;
            return Ok(out);
        };
        let (link_name, fields, derived) = (self.link_name, &self.fields, &self.derived);
        // Boxed: a prepared cipher is ~2.5 KB, which the map's growth moved again and again
        // (profiled: 3 % of a decrypt's CPU); records of one key mostly follow each other, so
        // the last one is looked up first.
        let mut ciphers: Vec<Box<DeterministicAead>> = Vec::new();
        let mut cipher_of: HashMap<Uuid, usize> = HashMap::new();
        let mut last: Option<(Uuid, usize)> = None;
        let mut rows = self
            .rows
            .take()
            .unwrap_or_else(|| OutputRows::new(fields.len()));
        rows.clear();
        let mut levels = Vec::new();
        let mut plain = Vec::new();
        let mut json_listed: Vec<String> = Vec::new();
        for (i, rec) in batch.records().enumerate() {
            let link = rec
                .value(self.link_slot)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| Uuid::parse_str(v).ok());
            let Some(link) = link else {
                rejects.push_counted(
                    rec.line(),
                    RejectReason::UnknownKey,
                    format!("'{link_name}' is missing or not a key link"),
                );
                continue;
            };
            let Some((key_id, material)) = self.key_table.get(&link) else {
                rejects.push_counted(
                    rec.line(),
                    RejectReason::UnknownKey,
                    "its key link is not in the keys export (never exported, or deleted)"
                        .to_string(),
                );
                continue;
            };
            levels.clear();
            let ok = rec
                .value(self.levels_slot)
                .and_then(|v| parse_levels(v, &mut levels));
            if ok.is_none() {
                levels.clear();
            }
            if !derived.includes(&levels) {
                out.without_consent += 1;
                out.accepted += 1;
                continue;
            }
            json_listed.clear();
            if let Some(v) = self.json_slot.and_then(|s| rec.value(s)) {
                match serde_json::from_slice::<Vec<String>>(v) {
                    Ok(list) => json_listed = list,
                    Err(_) => {
                        rejects.push_counted(
                            rec.line(),
                            RejectReason::Undecryptable,
                            "'strmMeta/jsonFields' is not a list of field names".to_string(),
                        );
                        continue;
                    }
                }
            }
            let c = match last {
                Some((l, c)) if l == link => c,
                _ => {
                    let c = *cipher_of.entry(link).or_insert_with(|| {
                        ciphers.push(Box::new(DeterministicAead::new(material, key_id)));
                        ciphers.len() - 1
                    });
                    last = Some((link, c));
                    c
                }
            };
            let aead = &ciphers[c];
            rows.push_row(
                i,
                RowMeta {
                    timestamp_ms: 0,
                    key_link: link,
                    consent_levels: (0, 0),
                    json_fields: (0, 0),
                },
            );
            let mut failed = None;
            for &(slot, purpose) in &self.pii {
                let Some(ct) = rec.value(slot).filter(|v| !v.is_empty()) else {
                    continue;
                };
                let treatment = derived.pii_treatment(slot, purpose);
                if treatment == PiiTreatment::Encrypt {
                    continue; // stays ciphertext, as it is
                }
                plain.clear();
                if aead.decrypt_base64_into(ct, &mut plain).is_err() {
                    failed = Some((slot, "does not decrypt under its key"));
                    break;
                }
                match treatment {
                    PiiTreatment::Mask => {
                        let start = rows.values_len();
                        let masker = derived.masker().expect("masked fields have a seed");
                        masker.mask_hex_into(&plain, rows.values_mut());
                        rows.replace_from(slot, start);
                    }
                    _ => {
                        let path = fields.fields()[slot].as_str();
                        let kind = if json_listed.iter().any(|f| f == path) {
                            ValueKind::Json
                        } else {
                            ValueKind::Text
                        };
                        if restore_plaintext(&mut rows, slot, &plain, kind).is_err() {
                            failed = Some((
                                slot,
                                "is listed in 'strmMeta/jsonFields' but does not decrypt to a \
                                 JSON value",
                            ));
                            break;
                        }
                    }
                }
            }
            if let Some((slot, why)) = failed {
                rows.pop_row();
                rejects.push_counted(
                    rec.line(),
                    RejectReason::Undecryptable,
                    format!("field '{}' {why}", fields.fields()[slot].as_str()),
                );
                continue;
            }
            for &slot in derived.masked_slots() {
                if self.is_pii[slot] {
                    continue;
                }
                if let Some(v) = rec.value(slot).filter(|v| !v.is_empty()) {
                    let start = rows.values_len();
                    let masker = derived.masker().expect("masked fields have a seed");
                    masker.mask_hex_into(v, rows.values_mut());
                    rows.replace_from(slot, start);
                }
            }
            out.accepted += 1;
        }
        let mut encoders = self.encoders.take(&layout, 1);
        encoders
            .get_with(0, self.format.as_ref(), fields, &self.contract_ref)?
            .encode_edited(&batch, &rows, &mut out.bytes)?;
        self.encoders.put(encoders);
        out.rows_written = rows.len() as u64;
        out.rejects = rejects.drain().0;
        self.rows.put(rows);
        self.batches.put(batch);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> KeyMaterial {
        KeyMaterial::from_slice(&[byte; crate::crypto::KEY_LEN]).unwrap()
    }

    proptest! {
        /// Every key is found under its link and nothing else is: links drawn from few prefixes
        /// (runs of many keys) and from all of them, the table's first and last prefixes too.
        #[test]
        fn a_key_table_finds_exactly_its_keys(
            links in proptest::collection::btree_set(
                prop_oneof![
                    any::<u128>(),
                    (0..3u128, any::<u64>()).prop_map(|(p, r)| (p << 112) | r as u128),
                    (any::<u64>()).prop_map(|r| (0xffffu128 << 112) | r as u128),
                ],
                0..300,
            ),
            absent in proptest::collection::vec(any::<u128>(), 0..50),
        ) {
            let entries: Vec<KeyEntry> = links
                .iter()
                .map(|&l| KeyEntry::new(l, (l % 1000) as u32 + 1, key(l as u8)))
                .collect();
            let table = KeyTable::new(entries, "keys.csv").unwrap();
            prop_assert_eq!(table.len(), links.len());
            for &l in &links {
                let (id, material) = table.get(&Uuid::from_u128(l)).unwrap();
                prop_assert_eq!(id, (l % 1000) as u32 + 1);
                let expected = key(l as u8);
                prop_assert_eq!(material.expose(), expected.expose());
            }
            for l in absent.into_iter().filter(|l| !links.contains(l)) {
                prop_assert!(table.get(&Uuid::from_u128(l)).is_none());
            }
        }
    }

    #[test]
    fn a_link_given_twice_counts_once_unless_its_keys_differ() {
        let entries = |e: &[(u128, u32, u8)]| -> Vec<KeyEntry> {
            e.iter()
                .map(|&(l, id, k)| KeyEntry::new(l, id, key(k)))
                .collect()
        };
        let twice = entries(&[(7, 1, 1), (9, 2, 2), (7, 1, 1)]);
        let table = KeyTable::new(twice, "keys.csv").unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(&Uuid::from_u128(7)).unwrap().0, 1);

        let conflicting = entries(&[(7, 1, 1), (9, 2, 2), (7, 1, 3)]);
        let e = KeyTable::new(conflicting, "keys.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keys.csv") && e.contains(&Uuid::from_u128(7).to_string()),
            "{e}"
        );
        assert!(KeyTable::new(entries(&[(7, 1, 1), (7, 2, 1)]), "k").is_err());
    }
}
