//! `keylink decrypt`: a derived dataset made later, from an encrypted dataset and a keys export,
//! with the same consent, purpose and masking semantics as a job's `derived_data` (SPEC §5).
//!
//! Every encrypted row carries its key link and consent levels (`strmMeta`). A row whose key link
//! is not in the keys export cannot be decrypted — its key was never exported, or was deleted
//! (crypto-shredding) — and is counted, never guessed; so is a row whose ciphertext does not
//! decrypt under its key. The output keeps the input's columns, metadata included, with the
//! requested purposes' PII decrypted (or masked) and everything else as it was.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::connector::{ObjectLocation, Sink, Source};
use crate::consent::parse_levels;
use crate::contract::DataContract;
use crate::crypto::KeyMaterial;
use crate::crypto::tink::{DeterministicAead, parse_keyset_json};
use crate::derive::{DerivedPlan, PiiTreatment};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::job::{ConsentLevelType, MaskedFields, PatternList};
use crate::record::{FieldPlan, OutputRows, RecordBatch, RowMeta};
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

/// Loads a keys export (`keyLink,encryptionKey,policyId,expiresAt`, CSV).
pub async fn load_keys(
    keys: &Location,
    csv: &dyn Format,
) -> Result<HashMap<Uuid, (u32, KeyMaterial)>> {
    let source = keys.source.as_ref().expect("a readable location");
    let shown = source.describe(&keys.path);
    let mut plan = FieldPlan::new();
    let link_slot = plan.slot("keyLink", true);
    let key_slot = plan.slot("encryptionKey", true);
    let mut decoder = csv.decoder(&plan);
    let mut batch = RecordBatch::new(plan.len());
    let mut rejects = Rejects::new(false);
    let mut out = HashMap::new();
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
            let key = parse_keyset_json(json)
                .map_err(|e| e.context(format!("{shown}: line {line}: encryptionKey")))?;
            out.insert(link, key);
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
    Ok(out)
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
    let mut ciphers: HashMap<Uuid, DeterministicAead> = HashMap::new();

    let mut summary = DecryptSummary {
        keys_loaded: key_table.len() as u64,
        output: sink.describe(&output.path),
        input: InputSummary {
            object: source.describe(&input.path),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut writer = sink.create_private(&output.path).await?;
    let result: Result<()> = async {
        let mut reader = source.open(&input.path).await?;
        let mut decoder = format.decoder(&fields);
        let mut batch = RecordBatch::new(fields.len());
        let mut rejects = Rejects::new(false);
        let mut header_written = false;
        let mut levels = Vec::new();
        let mut plain = Vec::new();
        let mut eof = false;
        while !eof {
            match reader.read_chunk().await? {
                Some(chunk) => decoder.decode(&chunk, &mut batch, &mut rejects)?,
                None => {
                    decoder.finish(&mut batch, &mut rejects)?;
                    eof = true;
                }
            }
            let Some(layout) = decoder.layout() else {
                continue;
            };
            let mut encoder = format.encoder(&fields, &layout, &contract_ref)?;
            let mut bytes = Vec::new();
            if !header_written {
                encoder.begin_unchanged(&mut bytes)?;
                header_written = true;
            }
            let mut rows = OutputRows::new(fields.len());
            let decoded = batch.len() as u64;
            // before the loop below adds its own, every reject is the decoder's
            let decoder_rejects = rejects.len() as u64;
            let mut accepted = 0u64;
            for (i, rec) in batch.records().enumerate() {
                let link = rec
                    .value(link_slot)
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
                let Some((key_id, material)) = key_table.get(&link) else {
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
                    .value(levels_slot)
                    .and_then(|v| parse_levels(v, &mut levels));
                if ok.is_none() {
                    levels.clear();
                }
                if !derived.includes(&levels) {
                    summary.rows_without_consent += 1;
                    accepted += 1;
                    continue;
                }
                let aead = ciphers
                    .entry(link)
                    .or_insert_with(|| DeterministicAead::new(material, *key_id));
                rows.push_row(
                    i,
                    RowMeta {
                        timestamp_ms: 0,
                        key_link: link,
                        consent_levels: (0, 0),
                    },
                );
                let mut failed = None;
                for &(slot, purpose) in &pii {
                    let Some(ct) = rec.value(slot).filter(|v| !v.is_empty()) else {
                        continue;
                    };
                    let treatment = derived.pii_treatment(slot, purpose);
                    if treatment == PiiTreatment::Encrypt {
                        continue; // stays ciphertext, as it is
                    }
                    plain.clear();
                    if aead.decrypt_base64_into(ct, &mut plain).is_err() {
                        failed = Some(slot);
                        break;
                    }
                    let start = rows.values_len();
                    match treatment {
                        PiiTreatment::Mask => {
                            let masker = derived.masker().expect("masked fields have a seed");
                            masker.mask_hex_into(&plain, rows.values_mut());
                        }
                        _ => rows.values_mut().extend_from_slice(&plain),
                    }
                    rows.replace_from(slot, start);
                }
                if let Some(slot) = failed {
                    rows.pop_row();
                    rejects.push_counted(
                        rec.line(),
                        RejectReason::Undecryptable,
                        format!(
                            "field '{}' does not decrypt under its key",
                            fields.fields()[slot].as_str()
                        ),
                    );
                    continue;
                }
                for &slot in derived.masked_slots() {
                    if is_pii[slot] {
                        continue;
                    }
                    if let Some(v) = rec.value(slot).filter(|v| !v.is_empty()) {
                        let start = rows.values_len();
                        let masker = derived.masker().expect("masked fields have a seed");
                        masker.mask_hex_into(v, rows.values_mut());
                        rows.replace_from(slot, start);
                    }
                }
                accepted += 1;
            }
            encoder.encode_edited(&batch, &rows, &mut bytes)?;
            summary.rows_written += rows.len() as u64;
            let (items, _) = rejects.drain();
            summary.input.rows_read += decoded + decoder_rejects;
            summary.input.rows_accepted += accepted;
            summary.input.add_rejects(&items);
            batch.clear();
            if !bytes.is_empty() {
                writer.write(Bytes::from(bytes)).await?;
            }
        }
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
