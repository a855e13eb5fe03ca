//! The privacy algorithm (SPEC §2), one batch at a time.
//!
//! [`PrivacyPlan::new`] checks and compiles a contract + job into a plan — every configuration
//! error surfaces here, before any data is read. Then, per [`RecordBatch`]:
//!
//! 1. [`PrivacyPlan::classify`] accepts or rejects each record (keyField present and non-empty,
//!    timestamp parses, validations match) and computes its window and consent levels;
//! 2. [`KeyResolver::resolve`] finds the key of every distinct scope (key group, keyField value,
//!    window) — from the run's cache, else from the key store in **one** call per batch (the
//!    calls of concurrent batches go together), which commits new keys before it returns;
//!    [`KeyResolver::sync`] makes them durable before anything encrypted with them is written,
//!    and the batch's keys list those this run has not exported yet;
//! 3. [`PrivacyPlan::transform`] encrypts every non-empty PII value once with its scope's key
//!    (Tink Deterministic AEAD), into the rows of the encrypted output and of every derived
//!    output that keeps it encrypted, and decrypts, masks or leaves out the rest per purpose.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use regex::bytes::Regex;

use crate::consent::{ConsentExtractor, ConsentOrigin};
use crate::contract::DataContract;
use crate::crypto::tink::DeterministicAead;
use crate::derive::{DerivedPlan, PiiTreatment, restore_plaintext};
use crate::error::{Error, Result};
use crate::format::write_levels;
use crate::job::BatchJob;
use crate::keystore::{DataKey, KeyLabels, KeyStore, LookupKey, ResolvedKey, ScopeRequest};
use crate::record::{FieldPlan, OutputRows, RecordBatch, RecordView, RowMeta, Slot, ValueKind};
use crate::reject::{RejectReason, Rejects};
use crate::timestamp::TimestampFormat;

/// The hasher of the resolver's maps (and of [`crate::link_index::LinkSet`]), looked up once per
/// record: keys are short, and the seed is random per process (the maps hold values from the
/// input).
pub(crate) type FastHash = foldhash::fast::RandomState;

/// Milliseconds in a day: the default key window.
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The compiled privacy settings of a job.
#[derive(Debug)]
pub struct PrivacyPlan {
    fields: FieldPlan,
    key_slot: usize,
    ts_slot: usize,
    subject_slot: Option<usize>,
    consent_slot: Option<usize>,
    /// (slot, purpose level) of every PII field.
    pii: Vec<(usize, i32)>,
    /// The path of every PII field (as `pii`) as a JSON string, for `strmMeta.jsonFields`.
    pii_json_names: Vec<Vec<u8>>,
    validations: Vec<(usize, Regex, usize)>,
    timestamp: TimestampFormat,
    consent: ConsentExtractor,
    window_ms: i64,
    retention_ms: i64,
    contract_ref: String,
    derived: Vec<DerivedPlan>,
    /// Per slot: whether it is a PII field.
    is_pii: Vec<bool>,
}

/// Settings of a run that do not come from the job file.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Key retention in days (from the job's policy).
    pub retention_days: u32,
    /// The field names masked-field patterns are matched against: the contract's schema, else
    /// the input's header, else the fields the contract names.
    pub universe: Vec<String>,
}

impl PrivacyPlan {
    /// Compiles the privacy settings of `job` under `contract`. `job_file` names the job in errors.
    pub fn new(
        job: &BatchJob,
        contract: &DataContract,
        opts: &PlanOptions,
        job_file: &str,
    ) -> Result<Self> {
        let mut fields = FieldPlan::new();
        let key_slot = fields.slot(&contract.key_field, true);
        let tsc = &job.encryption.timestamp_config;
        let ts_slot = fields.slot(&tsc.field, true);
        let timestamp = TimestampFormat::new(
            &tsc.format,
            tsc.default_time_zone.as_ref().map(|z| z.id.as_str()),
        )
        .map_err(|e| Error::from(e).context(format!("{job_file}: encryption.timestamp_config")))?;
        let consent =
            ConsentExtractor::new(&job.consent).map_err(|e| e.context(job_file.to_string()))?;
        let consent_slot = consent.field().map(|f| fields.slot(f, false));
        let subject_slot = contract
            .data_subject_field
            .as_deref()
            .map(|f| fields.slot(f, false));
        let pii: Vec<(usize, i32)> = contract
            .pii_fields
            .iter()
            .map(|p| (fields.slot(&p.field, false), p.purpose_level))
            .collect();
        let validations = contract
            .validations
            .iter()
            .enumerate()
            .map(|(i, v)| (fields.slot(&v.field, false), v.regex.clone(), i))
            .collect();
        let window_hours = job.encryption.window_hours.unwrap_or(24);
        if window_hours == 0 {
            return Err(Error::config(format!(
                "{job_file}: encryption.window_hours: must be at least 1"
            )));
        }
        let derived = job
            .derived_data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                DerivedPlan::new(
                    &format!("{job_file}: derived_data[{i}]"),
                    &d.consent_levels,
                    d.consent_level_type,
                    d.masked_fields.as_ref(),
                    contract,
                    &opts.universe,
                    &mut fields,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let pii_json_names = pii
            .iter()
            .map(|&(slot, _)| {
                serde_json::to_vec(fields.fields()[slot].as_str()).expect("a string serializes")
            })
            .collect();
        let mut is_pii = vec![false; fields.len()];
        for &(slot, _) in &pii {
            is_pii[slot] = true;
        }
        Ok(PrivacyPlan {
            derived,
            is_pii,
            fields,
            key_slot,
            ts_slot,
            subject_slot,
            consent_slot,
            pii,
            pii_json_names,
            validations,
            timestamp,
            consent,
            window_ms: i64::from(window_hours) * 60 * 60 * 1000,
            retention_ms: i64::from(opts.retention_days) * DAY_MS,
            contract_ref: contract.contract_ref.to_string(),
        })
    }

    /// The fields decoders must fill, in slot order.
    pub fn field_plan(&self) -> &FieldPlan {
        &self.fields
    }

    /// `handle/name/version` of the contract.
    pub fn contract_ref(&self) -> &str {
        &self.contract_ref
    }

    /// The field consent is read from (`consent_level_extractor.field`), if any.
    pub fn consent_field(&self) -> Option<&str> {
        self.consent.field()
    }

    /// The key window length in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Step 1: accepts or rejects every record of `batch`.
    pub fn classify(&self, batch: &RecordBatch, rejects: &mut Rejects) -> Classified {
        let mut out = Classified::default();
        let mut levels = Vec::new();
        for (i, rec) in batch.records().enumerate() {
            match self.classify_one(&rec, &mut levels) {
                Ok((timestamp_ms, origin)) => {
                    let start = out.levels.len() as u32;
                    out.levels.extend_from_slice(&levels);
                    if origin == ConsentOrigin::Fallback {
                        out.consent_defaulted += 1;
                    }
                    out.rows.push(Accepted {
                        record: i as u32,
                        timestamp_ms,
                        window_start_ms: timestamp_ms.div_euclid(self.window_ms) * self.window_ms,
                        levels: (start, out.levels.len() as u32),
                        key: u32::MAX,
                    });
                }
                Err((reason, detail)) => {
                    // the raw record, if wanted, is written by the input's format (see
                    // `Classified::rejected`): the batch's raw bytes are the decoder's, not the
                    // source's
                    rejects.push_counted(rec.line(), reason, detail);
                    out.rejected.push(i as u32);
                }
            }
        }
        out
    }

    fn classify_one(
        &self,
        rec: &RecordView<'_>,
        levels: &mut Vec<i32>,
    ) -> std::result::Result<(i64, ConsentOrigin), (RejectReason, String)> {
        let fields = self.fields.fields();
        match rec.value(self.key_slot) {
            Some(v) if !v.is_empty() => {}
            _ => {
                return Err((
                    RejectReason::MissingKeyField,
                    format!(
                        "keyField '{}' is missing or empty",
                        fields[self.key_slot].as_str()
                    ),
                ));
            }
        }
        let ts = rec
            .value(self.ts_slot)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| self.timestamp.parse(s))
            .ok_or_else(|| {
                (
                    RejectReason::UnparseableTimestamp,
                    format!(
                        "field '{}' does not match the timestamp format",
                        fields[self.ts_slot].as_str()
                    ),
                )
            })?;
        for (slot, regex, index) in &self.validations {
            let ok = rec.value(*slot).is_some_and(|v| regex.is_match(v));
            if !ok {
                return Err((
                    RejectReason::FailedValidation,
                    format!(
                        "field '{}' does not match validations[{index}]",
                        fields[*slot].as_str()
                    ),
                ));
            }
        }
        let consent = self.consent_slot.and_then(|s| rec.value(s));
        let origin = self.consent.extract(consent, levels);
        Ok((ts, origin))
    }

    /// The derived datasets' plans, in job order.
    pub fn derived(&self) -> &[DerivedPlan] {
        &self.derived
    }

    /// Step 3 with its outputs made here: the encrypted output's rows (empty unless
    /// `encrypted`) and every derived dataset's, empty when no record was accepted. What batch
    /// jobs and streams both call.
    pub fn output_rows(
        &self,
        batch: &RecordBatch,
        classified: &Classified,
        keys: &BatchKeys,
        encrypted: bool,
    ) -> Result<(OutputRows, Vec<OutputRows>)> {
        let mut rows = (OutputRows::default(), Vec::new());
        self.output_rows_into(batch, classified, keys, encrypted, &mut rows)?;
        Ok(rows)
    }

    /// [`PrivacyPlan::output_rows`] into `rows` (the encrypted output's, each derived output's),
    /// emptied first: rows kept from an earlier batch keep their buffers.
    pub fn output_rows_into(
        &self,
        batch: &RecordBatch,
        classified: &Classified,
        keys: &BatchKeys,
        encrypted: bool,
        rows: &mut (OutputRows, Vec<OutputRows>),
    ) -> Result<()> {
        let n_slots = self.field_plan().len();
        let (enc, derived) = rows;
        for r in std::iter::once(&mut *enc).chain(derived.iter_mut()) {
            if r.n_slots() == n_slots {
                r.clear();
            } else {
                *r = OutputRows::new(n_slots);
            }
        }
        derived.resize_with(self.derived.len(), || OutputRows::new(n_slots));
        if !classified.rows.is_empty() {
            let enc = encrypted.then_some(enc);
            self.transform(batch, classified, keys, enc, derived)?;
        }
        Ok(())
    }

    /// Step 3: writes the rows of every output for the accepted records of `batch` — the
    /// encrypted output (when wanted) and each derived dataset (`derived[i]` for
    /// [`PrivacyPlan::derived`]`()[i]`) — in one pass. Each PII value is encrypted once; its
    /// ciphertext serves every output that keeps it encrypted.
    pub fn transform(
        &self,
        batch: &RecordBatch,
        classified: &Classified,
        keys: &BatchKeys,
        mut encrypted: Option<&mut OutputRows>,
        derived: &mut [OutputRows],
    ) -> Result<()> {
        debug_assert_eq!(derived.len(), self.derived.len());
        let mut levels_text = Vec::with_capacity(16);
        let mut json_text = Vec::with_capacity(64);
        let n_pii = self.pii.len();
        // The encryption is deterministic: under one key, a value has one ciphertext. In event
        // data a key's records mostly repeat their PII (a session's user, e-mail, name), so each
        // (key, PII field) remembers the last value it encrypted in this batch and its ciphertext
        // in `cts`, and a repeat is copied instead of encrypted again (measured at 1M rows,
        // ~10 records a key: encryption fell from ~15% of a job's CPU to ~3%). `cts` holds at
        // most the batch's distinct ciphertexts, as much as the encrypted output's values, and
        // lives only for this call.
        let mut memo: Vec<Option<(&[u8], usize, usize)>> = vec![None; keys.keys.len() * n_pii];
        let mut cts: Vec<u8> = Vec::with_capacity(4096);
        let mut ct_ranges: Vec<Option<(usize, usize)>> = vec![None; n_pii];
        // Likewise a mask (a keyed hash) depends on the value alone: each (derived output, field)
        // remembers its last value and where its mask is in that output, and a repeat points
        // there instead of hashing again.
        let n_slots = self.fields.len();
        let mut mask_memo: Vec<MaskMemo<'_>> = vec![None; self.derived.len() * n_slots];
        // And where each output (the encrypted one first, then the derived) last copied each PII
        // field's ciphertext: a repeat points there instead of copying it again, so a key's
        // ciphertext is held once per output, not once per record (measured at 1M rows: the
        // encrypted output's values fell from ~155 to ~20 bytes a row).
        let mut copied: Vec<CopyMemo> = vec![None; (1 + self.derived.len()) * n_pii];
        for (i, row) in classified.rows.iter().enumerate() {
            if i == SIZING_ROWS {
                // the outputs' values grow by about as much per row as so far: reserve it once
                // instead of doubling (profiled: the copies were 1.4% of a job's CPU)
                let left = classified.rows.len() - i;
                for out in encrypted
                    .as_deref_mut()
                    .into_iter()
                    .chain(derived.iter_mut())
                {
                    let per_row = out.values_len() as usize / i;
                    out.values_mut()
                        .reserve(per_row * left + per_row * left / 8);
                    // and the rows themselves (a derived output holds some of them)
                    let rows = out.len() * left / i;
                    out.reserve_rows(rows + rows / 8);
                }
            }
            let rec = batch.record(row.record as usize);
            let key = &keys.keys[row.key as usize];
            let levels = classified.levels(row);
            levels_text.clear();
            write_levels(levels, &mut levels_text);
            // the PII fields holding JSON other than a string: their ciphertext is of JSON text
            json_text.clear();
            for (j, &(slot, _)) in self.pii.iter().enumerate() {
                if let Slot::Value {
                    kind: ValueKind::Json,
                    ..
                } = rec.slot(slot)
                {
                    json_text.push(if json_text.is_empty() { b'[' } else { b',' });
                    json_text.extend_from_slice(&self.pii_json_names[j]);
                }
            }
            if !json_text.is_empty() {
                json_text.push(b']');
            }
            let meta = |out: &mut OutputRows| RowMeta {
                timestamp_ms: row.timestamp_ms,
                key_link: key.key.key_link,
                consent_levels: out.push_text(&levels_text),
                json_fields: if json_text.is_empty() {
                    (0, 0)
                } else {
                    out.push_text(&json_text)
                },
            };
            for (j, &(slot, _)) in self.pii.iter().enumerate() {
                ct_ranges[j] = match rec.value(slot) {
                    Some(v) if !v.is_empty() => {
                        let last = &mut memo[row.key as usize * n_pii + j];
                        match *last {
                            Some((prev, a, b)) if prev == v => Some((a, b)),
                            _ => {
                                let start = cts.len();
                                key.aead.encrypt_base64_into(v, &mut cts)?;
                                *last = Some((v, start, cts.len()));
                                Some((start, cts.len()))
                            }
                        }
                    }
                    // empty stays empty; null and missing stay as they are
                    _ => None,
                };
            }
            if let Some(out) = encrypted.as_deref_mut() {
                let m = meta(out);
                out.push_row(row.record as usize, m);
                for (j, &(slot, _)) in self.pii.iter().enumerate() {
                    if let Some(ct) = ct_ranges[j] {
                        copy_ciphertext(out, slot, &cts, ct, &mut copied[j]);
                    }
                }
            }
            for (di, (d, out)) in self.derived.iter().zip(derived.iter_mut()).enumerate() {
                let mask_memo = &mut mask_memo[di * n_slots..(di + 1) * n_slots];
                let copied = &mut copied[(1 + di) * n_pii..(2 + di) * n_pii];
                if !d.includes(levels) {
                    continue;
                }
                let m = meta(out);
                out.push_row(row.record as usize, m);
                for (j, &(slot, purpose)) in self.pii.iter().enumerate() {
                    let Some(ct) = ct_ranges[j] else { continue };
                    match d.pii_treatment(slot, purpose) {
                        PiiTreatment::Decrypt => {
                            // restored as `keylink decrypt` restores it, so the two agree
                            if let Slot::Value { value, kind, .. } = rec.slot(slot) {
                                restore_plaintext(out, slot, rec.value_bytes(value), kind)
                                    .map_err(|_| {
                                        Error::new(
                                            crate::error::ErrorKind::Other,
                                            format!(
                                                "line {}: field '{}' is not one JSON value",
                                                rec.line(),
                                                self.fields.fields()[slot]
                                            ),
                                        )
                                    })?;
                            }
                        }
                        PiiTreatment::Encrypt => {
                            copy_ciphertext(out, slot, &cts, ct, &mut copied[j]);
                        }
                        PiiTreatment::Mask => {
                            mask_into(d, &rec, slot, out, &mut mask_memo[slot])?;
                        }
                    }
                }
                for &slot in d.masked_slots() {
                    if !self.is_pii[slot] {
                        mask_into(d, &rec, slot, out, &mut mask_memo[slot])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The scope of an accepted record, in plaintext (it never leaves the engine: the key store
    /// gets [`PlainScope::hashed`]).
    fn scope_of<'a>(&self, rec: &RecordView<'a>, row: &Accepted, group: &'a str) -> PlainScope<'a> {
        PlainScope {
            group,
            key_value: rec.value(self.key_slot).unwrap_or_default(),
            window_start_ms: row.window_start_ms,
            expires_at_ms: row.window_start_ms.saturating_add(self.retention_ms),
            subject: self
                .subject_slot
                .and_then(|s| rec.value(s))
                .filter(|v| !v.is_empty()),
        }
    }
}

/// The scope of a record before hashing: engine-internal.
#[derive(Clone, Copy)]
struct PlainScope<'a> {
    group: &'a str,
    key_value: &'a [u8],
    window_start_ms: i64,
    expires_at_ms: i64,
    subject: Option<&'a [u8]>,
}

impl PlainScope<'_> {
    /// Whether `other` is the same scope (so has the same key): what [`cache_key`] compares.
    fn same_as(&self, other: &PlainScope<'_>) -> bool {
        self.window_start_ms == other.window_start_ms
            && self.key_value == other.key_value
            && self.subject == other.subject
            && self.group == other.group
    }

    /// The request the key store gets: hashes only.
    fn hashed(&self, lookup: &LookupKey, labels: &Arc<KeyLabels>) -> ScopeRequest {
        ScopeRequest {
            scope: lookup.scope_hash(self.group, self.key_value),
            window_start_ms: self.window_start_ms,
            expires_at_ms: self.expires_at_ms,
            subject: self.subject.map(|s| lookup.subject_hash(s)),
            labels: Arc::clone(labels),
        }
    }
}

/// The last value masked in one field of one output, and where its mask is in that output.
type MaskMemo<'a> = Option<(&'a [u8], u32, u32)>;

/// The last ciphertext (a range of the transform's ciphertexts) copied into one field of one
/// output, and where it is in that output.
type CopyMemo = Option<((usize, usize), (u32, u32))>;

/// Makes slot `slot` of the last row of `out` the ciphertext at `ct` in `cts`: the text `last`
/// copied when it is the same ciphertext, else a new copy, which becomes `last`.
fn copy_ciphertext(
    out: &mut OutputRows,
    slot: usize,
    cts: &[u8],
    ct: (usize, usize),
    last: &mut CopyMemo,
) {
    match *last {
        Some((prev, (a, b))) if prev == ct => out.set_text(slot, a, b),
        _ => {
            let start = out.values_len();
            out.values_mut().extend_from_slice(&cts[ct.0..ct.1]);
            out.replace_from(slot, start);
            *last = Some((ct, (start, out.values_len())));
        }
    }
}

/// Replaces slot `slot` of the last row of `out` with the mask of the record's value (empty,
/// null and missing values stay as they are). When the value is `last`'s, the row points at
/// that mask; otherwise it is computed and becomes `last`.
fn mask_into<'a>(
    d: &DerivedPlan,
    rec: &RecordView<'a>,
    slot: usize,
    out: &mut OutputRows,
    last: &mut MaskMemo<'a>,
) -> Result<()> {
    let Some(v) = rec.value(slot) else {
        return Ok(());
    };
    if v.is_empty() {
        return Ok(());
    }
    if let Some((prev, a, b)) = *last
        && prev == v
    {
        out.set_text(slot, a, b);
        return Ok(());
    }
    let masker = d
        .masker()
        .ok_or_else(|| Error::config(format!("{}: a masked field without a seed", d.name)))?;
    let start = out.values_len();
    masker.mask_hex_into(v, out.values_mut());
    out.replace_from(slot, start);
    *last = Some((v, start, out.values_len()));
    Ok(())
}

/// An accepted record of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Index in the batch.
    pub record: u32,
    /// Event time, epoch ms.
    pub timestamp_ms: i64,
    /// Its key window's start, epoch ms.
    pub window_start_ms: i64,
    levels: (u32, u32),
    /// Index into [`BatchKeys::keys`], set by [`KeyResolver::resolve`].
    key: u32,
}

/// The outcome of [`PrivacyPlan::classify`] for one batch.
#[derive(Debug, Default)]
pub struct Classified {
    /// Accepted records, in batch order.
    pub rows: Vec<Accepted>,
    levels: Vec<i32>,
    /// Accepted records whose consent fell back to the default.
    pub consent_defaulted: u64,
    /// Indexes (in the batch) of the records classify rejected.
    pub rejected: Vec<u32>,
}

impl Classified {
    /// The consent levels of an accepted row.
    pub fn levels(&self, row: &Accepted) -> &[i32] {
        &self.levels[row.levels.0 as usize..row.levels.1 as usize]
    }

    /// Replaces the consent levels of accepted row `row` (an index in [`Classified::rows`]):
    /// a stream event's own `strmMeta.consentLevels`, sorted and without duplicates.
    pub fn set_levels(&mut self, row: usize, levels: &[i32]) {
        let start = self.levels.len() as u32;
        self.levels.extend_from_slice(levels);
        self.rows[row].levels = (start, self.levels.len() as u32);
    }
}

/// A key ready for use: the stored key and its prepared cipher.
pub struct PreparedKey {
    /// The stored key.
    pub key: Arc<DataKey>,
    /// Its cipher.
    pub aead: DeterministicAead,
    /// Whether its scope was forgotten before (the key replaces a destroyed one).
    pub after_forget: bool,
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedKey")
            .field("key_link", &self.key.key_link)
            .finish_non_exhaustive()
    }
}

/// The keys of one batch.
#[derive(Debug, Default)]
pub struct BatchKeys {
    /// Distinct keys used by the batch.
    pub keys: Vec<Arc<PreparedKey>>,
    /// Keys this batch may be the first of the run to use: for an exclusive group
    /// ([`KeyResolver::exclusive_group`]) the keys created for it, else the keys not exported
    /// yet when it was resolved. The keys export writes those [`KeyResolver::claim_export`]
    /// grants, asked in the batches' order.
    pub first_use: Vec<Arc<DataKey>>,
    /// Keys created by the store for this batch.
    pub created: u64,
    /// What [`KeyResolver::sync`] must cover before anything encrypted with these keys is
    /// written: the key-store answers received when they were resolved.
    pub durable_after: DurableAfter,
}

/// A point in a resolver's key-store answers ([`BatchKeys::durable_after`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurableAfter(u64);

/// Finds keys for scopes: a bounded cache in front of the key store, shared by a run's workers.
pub struct KeyResolver {
    store: Arc<dyn KeyStore>,
    /// The store's lookup key, read once.
    lookup: LookupKey,
    group: String,
    /// Group and policy recorded with new keys.
    labels: Arc<KeyLabels>,
    cache: Mutex<lru::LruCache<Box<[u8]>, Arc<PreparedKey>, FastHash>>,
    /// Keys handed out so far, so that each goes to the keys export once; `None` for a group
    /// of this resolver's alone ([`KeyResolver::exclusive_group`]), where a key's first use is
    /// its creation.
    exported: Option<Mutex<crate::link_index::LinkSet>>,
    created: AtomicU64,
    /// Records whose scope had been forgotten (they got a new key).
    after_forget: AtomicU64,
    /// Concurrent batches' key-store calls, coalesced.
    group_commit: GroupCommit,
    /// Keys made durable: see [`KeyResolver::sync`].
    durable: DurableUpTo,
}

/// How far the keys a resolver handed out are durable ([`KeyResolver::sync`]): key-store
/// answers are numbered as they arrive, and a sync covers every answer that arrived before it
/// started.
#[derive(Debug, Default)]
struct DurableUpTo {
    /// Key-store answers received.
    answers: AtomicU64,
    /// Answers made durable by a finished [`KeyStore::sync`].
    synced: AtomicU64,
    /// Held while a sync runs; batches that wait for it find their answers covered after.
    running: tokio::sync::Mutex<()>,
}

/// Group commit: the batches in flight ask the key store for their new keys at about the same
/// time; instead of one store transaction each, the requests that arrive while a call is running
/// wait and go together in the next call. Profiled on the embedded store: every transaction
/// rewrites the random B-tree pages its keys touched (~5 page writes per key at one batch per
/// transaction, ~0.5 at ten), so fewer, larger transactions are most of the cost of new keys.
/// Durability is unchanged: a batch gets its keys only after the call that created them
/// returned, i.e. after they were committed.
#[derive(Debug, Default)]
struct GroupCommit {
    /// Requests waiting for the next call.
    queue: Mutex<Vec<Waiting>>,
    /// Held by the caller running the store call (the leader).
    leader: tokio::sync::Mutex<()>,
    /// Store calls made (for tests and logs).
    calls: AtomicU64,
}

#[derive(Debug)]
struct Waiting {
    requests: Vec<ScopeRequest>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<ResolvedKey>>>,
}

impl GroupCommit {
    /// `store.get_or_create(requests)`, possibly together with other callers' requests.
    async fn get_or_create(
        &self,
        store: &dyn KeyStore,
        requests: Vec<ScopeRequest>,
    ) -> Result<Vec<ResolvedKey>> {
        use tokio::sync::oneshot::error::TryRecvError;
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .expect("poisoned")
            .push(Waiting { requests, reply });
        let lost = || Error::key_store("a key-store call of another batch was cancelled");
        // a leader answers everything it took before it lets the next one lead, so: either our
        // answer is there once we lead, or our request is still queued and we take it
        let _leading = self.leader.lock().await;
        match answer.try_recv() {
            Ok(r) => return r,
            Err(TryRecvError::Closed) => return Err(lost()),
            Err(TryRecvError::Empty) => {}
        }
        let taken = std::mem::take(&mut *self.queue.lock().expect("poisoned"));
        let all: Vec<ScopeRequest> = taken
            .iter()
            .flat_map(|w| w.requests.iter().cloned())
            .collect();
        self.calls.fetch_add(1, Ordering::Relaxed);
        match store.get_or_create(&all).await {
            Ok(resolved) if resolved.len() == all.len() => {
                let mut resolved = resolved.into_iter();
                for w in taken {
                    let mine: Vec<ResolvedKey> = resolved.by_ref().take(w.requests.len()).collect();
                    let _ = w.reply.send(Ok(mine));
                }
            }
            Ok(resolved) => {
                let e = format!(
                    "the key store {} answered {} keys for {} scopes",
                    store.describe(),
                    resolved.len(),
                    all.len()
                );
                for w in taken {
                    let _ = w.reply.send(Err(Error::key_store(e.clone())));
                }
            }
            Err(e) => {
                for w in taken {
                    let _ = w.reply.send(Err(Error::new(e.kind(), e.to_string())));
                }
            }
        }
        match answer.try_recv() {
            Ok(r) => r,
            Err(_) => Err(lost()),
        }
    }
}

impl std::fmt::Debug for KeyResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyResolver")
            .field("store", &self.store)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Rows [`PrivacyPlan::transform`] writes before it sizes its outputs' buffers for the rest.
const SIZING_ROWS: usize = 64;

/// Default number of prepared keys kept in memory by a stream. A prepared key (two expanded
/// AES-256 key schedules and the CMAC state) is about 2.5 KB, so this bounds the cache near
/// 25 MB; time-ordered input hits it almost always, and a miss costs one batched key-store read.
pub const DEFAULT_KEY_CACHE: usize = 10_000;

/// Default number of prepared keys kept in memory by a batch job. A batch of 8,192 records
/// resolves all its missing keys in one store call anyway, so the cache only saves reads of keys
/// that recur across nearby batches. Measured at 1M rows and 95k keys (`cargo xtask bench`):
/// 2,048 instead of 10,000 kept peak RSS ~25 MB lower, at the same or slightly less CPU.
pub const BATCH_KEY_CACHE: usize = 2_048;

impl KeyResolver {
    /// A resolver for key group `group`, caching up to `cache_size` keys.
    pub fn new(store: Arc<dyn KeyStore>, group: String, cache_size: usize) -> Self {
        KeyResolver {
            lookup: store.lookup_key().clone(),
            store,
            labels: Arc::new(KeyLabels {
                group: group.clone(),
                policy_id: String::new(),
            }),
            group,
            cache: Mutex::new(lru::LruCache::with_hasher(
                NonZeroUsize::new(cache_size.max(1)).expect("max(1)"),
                FastHash::default(),
            )),
            exported: Some(Mutex::default()),
            created: AtomicU64::new(0),
            after_forget: AtomicU64::new(0),
            group_commit: GroupCommit::default(),
            durable: DurableUpTo::default(),
        }
    }

    /// Makes the keys of a batch ([`BatchKeys::durable_after`]) durable ([`KeyStore::sync`]); call
    /// it before writing anything encrypted with them. A sync covers every key handed out before
    /// it started (keys served from the cache came from an earlier answer, so they are covered
    /// too): batches that wait at once share one store call, and a batch whose keys an earlier
    /// sync covered does not wait at all.
    ///
    /// The store commits keys before it answers, so a sync is needed only against the loss of
    /// the machine, not of the process: it runs here, beside the other batches' key-store calls
    /// and transforms, instead of inside every store call.
    pub async fn sync(&self, keys: DurableAfter) -> Result<()> {
        let d = &self.durable;
        let wanted = keys.0;
        if d.synced.load(Ordering::Acquire) >= wanted {
            return Ok(());
        }
        let _running = d.running.lock().await;
        if d.synced.load(Ordering::Acquire) >= wanted {
            return Ok(()); // the sync we waited for covered our answers
        }
        let covers = d.answers.load(Ordering::Acquire);
        self.store.sync().await?;
        d.synced.fetch_max(covers, Ordering::AcqRel);
        Ok(())
    }

    /// Records `policy_id` with the keys this resolver creates.
    pub fn with_policy(mut self, policy_id: &str) -> Self {
        self.labels = Arc::new(KeyLabels {
            group: self.group.clone(),
            policy_id: policy_id.to_owned(),
        });
        self
    }

    /// Declares the key group this resolver's alone: made up for this run, and used by no other
    /// resolver, shard or process. Every key of the group is then created through this resolver,
    /// and the store reports a key `created` once, so a key's first use is its creation: the
    /// keys export gets each key when it is created, and no set of every key handed out is kept
    /// (at 10M rows, 950k keys, that set was ~36 MB, and twice that while it grew).
    ///
    /// Wrong for a shared group: a key another resolver created would be missing from this
    /// one's export. The engine declares it only for a job without `batch_job_group_id`, in one
    /// unit (outputs not per input).
    pub fn exclusive_group(mut self) -> Self {
        self.exported = None;
        self
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Records so far whose scope had been forgotten before, so they were encrypted under a new
    /// key (SPEC §9).
    pub fn records_after_forget(&self) -> u64 {
        self.after_forget.load(Ordering::Relaxed)
    }

    /// The key group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Keys created so far by this resolver.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Distinct keys used so far (= keys exported).
    pub fn used(&self) -> u64 {
        match &self.exported {
            Some(exported) => exported.lock().expect("poisoned").len() as u64,
            // every key of an exclusive group was created here
            None => self.created(),
        }
    }

    /// Step 2: finds the key of every accepted row of `classified` (setting each row's key
    /// index) with at most one key-store call.
    pub async fn resolve(
        &self,
        plan: &PrivacyPlan,
        batch: &RecordBatch,
        classified: &mut Classified,
    ) -> Result<BatchKeys> {
        let mut out = BatchKeys::default();
        // distinct scopes of the batch → index in out.keys (or in `missing`)
        let mut index: HashMap<Box<[u8]>, u32, FastHash> = HashMap::default();
        let mut missing: Vec<(Box<[u8]>, usize)> = Vec::new(); // (cache key, first row)
        let mut pending_rows: Vec<(usize, usize)> = Vec::new(); // (row, missing idx)
        let mut scratch = Vec::with_capacity(64);
        // the previous row's scope and its index: a key's records mostly come one after another
        // (a session's events), and comparing a scope with the last one is cheaper than building
        // its cache key and hashing it
        let mut previous: Option<(PlainScope<'_>, u32)> = None;
        {
            let mut cache = self.cache.lock().expect("poisoned");
            for (ri, row) in classified.rows.iter_mut().enumerate() {
                let rec = batch.record(row.record as usize);
                let scope = plan.scope_of(&rec, row, &self.group);
                let k = match previous {
                    Some((prev, k)) if prev.same_as(&scope) => k,
                    _ => {
                        cache_key(&scope, &mut scratch);
                        if let Some(&k) = index.get(scratch.as_slice()) {
                            k
                        } else {
                            let boxed: Box<[u8]> = scratch.as_slice().into();
                            if let Some(p) = cache.get(&boxed) {
                                let k = out.keys.len() as u32;
                                out.keys.push(p.clone());
                                index.insert(boxed, k);
                                k
                            } else {
                                let m = missing.len() as u32;
                                missing.push((boxed.clone(), ri));
                                index.insert(boxed, m | PENDING);
                                m | PENDING
                            }
                        }
                    }
                };
                previous = Some((scope, k));
                if k & PENDING != 0 {
                    pending_rows.push((ri, (k & !PENDING) as usize));
                } else {
                    row.key = k;
                }
            }
        }
        if !missing.is_empty() {
            let requests: Vec<ScopeRequest> = missing
                .iter()
                .map(|(_, ri)| {
                    let row = &classified.rows[*ri];
                    plan.scope_of(&batch.record(row.record as usize), row, &self.group)
                        .hashed(&self.lookup, &self.labels)
                })
                .collect();
            let n_requests = requests.len();
            let resolved = self
                .group_commit
                .get_or_create(self.store.as_ref(), requests)
                .await?;
            self.durable.answers.fetch_add(1, Ordering::AcqRel);
            if resolved.len() != n_requests {
                return Err(Error::key_store(format!(
                    "the key store {} answered {} keys for {} scopes",
                    self.store.describe(),
                    resolved.len(),
                    n_requests
                )));
            }
            let mut slot_of_missing = Vec::with_capacity(missing.len());
            // keys the cache drops are zeroized (~1 µs each): after the lock is released
            let mut evicted = Vec::with_capacity(missing.len());
            let mut cache = self.cache.lock().expect("poisoned");
            for ((ck, _), r) in missing.into_iter().zip(resolved) {
                if r.created {
                    out.created += 1;
                    if self.exported.is_none() {
                        // an exclusive group: a key's first use is its creation
                        out.first_use.push(r.key.clone());
                    }
                }
                let prepared = Arc::new(PreparedKey {
                    aead: DeterministicAead::new(&r.key.material, r.key.key_id),
                    key: r.key,
                    after_forget: r.after_forget,
                });
                let k = out.keys.len() as u32;
                out.keys.push(prepared.clone());
                evicted.extend(cache.push(ck, prepared));
                slot_of_missing.push(k);
            }
            drop(cache);
            drop(evicted);
            for (ri, m) in pending_rows {
                classified.rows[ri].key = slot_of_missing[m];
            }
        }
        self.created.fetch_add(out.created, Ordering::Relaxed);
        out.durable_after = DurableAfter(self.durable.answers.load(Ordering::Acquire));
        if out.keys.iter().any(|k| k.after_forget) {
            let n = classified
                .rows
                .iter()
                .filter(|r| out.keys[r.key as usize].after_forget)
                .count();
            self.after_forget.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(exported) = &self.exported {
            // Candidates only: the set grows in the batches' order (`claim_export`), and a later
            // batch may be resolved before an earlier one that uses the same key. In the order
            // of the rows, not of `out.keys` (which depends on what another batch put in the
            // cache first), so that the export's order is the same from run to run.
            let mut listed = vec![false; out.keys.len()];
            let mut in_order = Vec::with_capacity(out.keys.len());
            for row in &classified.rows {
                let k = row.key as usize;
                if !listed[k] {
                    listed[k] = true;
                    in_order.push(k);
                }
            }
            let exported = exported.lock().expect("poisoned");
            for k in in_order {
                let key = &out.keys[k].key;
                if !exported.contains(key.key_link.as_u128()) {
                    out.first_use.push(key.clone());
                }
            }
        }
        Ok(out)
    }

    /// Whether the keys export writes `key_link` (one of a batch's [`BatchKeys::first_use`])
    /// now: yes the first time it is asked for a key, so that each key is exported once. Asked
    /// by the writer in the batches' order, which makes the export's order the input's (and the
    /// same from run to run), however the concurrent batches' key lookups interleave. For an
    /// exclusive group, always yes: its `first_use` are the keys created, each created once.
    pub fn claim_export(&self, key_link: uuid::Uuid) -> bool {
        match &self.exported {
            Some(exported) => exported
                .lock()
                .expect("poisoned")
                .insert(key_link.as_u128()),
            None => true,
        }
    }
}

const PENDING: u32 = 1 << 31;

/// An unambiguous cache key for a scope within one group: window, subject, key value.
fn cache_key(scope: &PlainScope<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&scope.window_start_ms.to_be_bytes());
    match scope.subject {
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s);
        }
        None => out.push(0),
    }
    out.extend_from_slice(scope.key_value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::DataContract;
    use crate::keystore::{ScopeHash, SubjectHash};
    use crate::record::{Edit, ValueKind};
    use proptest::prelude::*;
    use std::collections::HashMap as Map;
    use std::path::Path;
    use uuid::Uuid;

    /// An in-memory key store: enough for a unit test of the transform (the real store has its
    /// own tests).
    type Scopes = Map<(ScopeHash, i64), Arc<DataKey>>;

    #[derive(Debug)]
    struct MemStore(std::sync::Mutex<Scopes>, LookupKey);

    impl Default for MemStore {
        fn default() -> Self {
            MemStore(Default::default(), LookupKey::new(&[7; 32]).unwrap())
        }
    }

    #[async_trait::async_trait]
    impl KeyStore for MemStore {
        fn lookup_key(&self) -> &LookupKey {
            &self.1
        }
        async fn get_or_create(&self, scopes: &[ScopeRequest]) -> Result<Vec<ResolvedKey>> {
            let mut m = self.0.lock().unwrap();
            Ok(scopes
                .iter()
                .map(|s| {
                    let k = (s.scope, s.window_start_ms);
                    let created = !m.contains_key(&k);
                    let key = m
                        .entry(k)
                        .or_insert_with(|| {
                            Arc::new(DataKey {
                                key_link: Uuid::new_v4(),
                                key_id: crate::crypto::generate_key_id().unwrap(),
                                material: crate::crypto::KeyMaterial::generate().unwrap(),
                                window_start_ms: s.window_start_ms,
                                expires_at_ms: s.expires_at_ms,
                            })
                        })
                        .clone();
                    ResolvedKey {
                        key,
                        created,
                        after_forget: false,
                    }
                })
                .collect())
        }
        async fn get_by_key_links(&self, _: &[Uuid]) -> Result<Vec<Option<Arc<DataKey>>>> {
            unimplemented!("not used by the transform")
        }
        async fn subject_key_links(&self, _: &SubjectHash) -> Result<Vec<Uuid>> {
            unimplemented!("not used by the transform")
        }
        async fn forget_subject(&self, _: &SubjectHash) -> Result<u64> {
            unimplemented!("not used by the transform")
        }
        async fn purge_expired(&self, _: i64) -> Result<u64> {
            unimplemented!("not used by the transform")
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    /// A store that takes its time, so that callers pile up behind a running call; it counts
    /// its syncs, which fail while `failing` is set.
    #[derive(Debug, Default)]
    struct SlowStore {
        inner: MemStore,
        syncs: AtomicU64,
        failing: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl KeyStore for SlowStore {
        fn lookup_key(&self) -> &LookupKey {
            self.inner.lookup_key()
        }
        async fn get_or_create(&self, scopes: &[ScopeRequest]) -> Result<Vec<ResolvedKey>> {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            self.inner.get_or_create(scopes).await
        }
        async fn sync(&self) -> Result<()> {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(Error::key_store("the disk is gone"));
            }
            self.syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn get_by_key_links(&self, _: &[Uuid]) -> Result<Vec<Option<Arc<DataKey>>>> {
            unimplemented!("not used")
        }
        async fn subject_key_links(&self, _: &SubjectHash) -> Result<Vec<Uuid>> {
            unimplemented!("not used")
        }
        async fn forget_subject(&self, _: &SubjectHash) -> Result<u64> {
            unimplemented!("not used")
        }
        async fn purge_expired(&self, _: i64) -> Result<u64> {
            unimplemented!("not used")
        }
        fn describe(&self) -> String {
            "slow memory".into()
        }
    }

    /// Keys are made durable before output is written (SPEC §2) with as few store syncs as
    /// possible: none when no key-store answer came since the last one, one for every batch
    /// waiting at once, and a failed sync is an error (and is tried again by the next batch).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sync_covers_every_answer_once_and_waiting_batches_share_it() {
        let store = Arc::new(SlowStore::default());
        let r = Arc::new(KeyResolver::new(store.clone(), "g".into(), 16));
        let syncs = || store.syncs.load(Ordering::SeqCst);
        let now = || DurableAfter(r.durable.answers.load(Ordering::SeqCst));
        r.sync(now()).await.unwrap();
        assert_eq!(syncs(), 0, "no answer yet: nothing to make durable");
        r.durable.answers.fetch_add(1, Ordering::SeqCst);
        r.sync(now()).await.unwrap();
        r.sync(now()).await.unwrap();
        assert_eq!(syncs(), 1);
        // a batch whose keys came before the last sync does not sync again, even if answers
        // came since
        let early = now();
        r.durable.answers.fetch_add(1, Ordering::SeqCst);
        r.sync(early).await.unwrap();
        assert_eq!(syncs(), 1);
        // eight batches with new answers wait at once: one sync covers them all
        r.durable.answers.fetch_add(3, Ordering::SeqCst);
        let waiting: Vec<_> = (0..8)
            .map(|_| {
                let (r, at) = (r.clone(), now());
                tokio::spawn(async move { r.sync(at).await })
            })
            .collect();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(syncs(), 2);
        // a failed sync fails the batch and covers nothing
        r.durable.answers.fetch_add(1, Ordering::SeqCst);
        store.failing.store(true, Ordering::SeqCst);
        let e = r.sync(now()).await.unwrap_err();
        assert!(e.to_string().contains("the disk is gone"), "{e}");
        store.failing.store(false, Ordering::SeqCst);
        r.sync(now()).await.unwrap();
        assert_eq!(syncs(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_share_store_calls_and_get_their_own_answers() {
        let store = Arc::new(SlowStore::default());
        let gc = Arc::new(GroupCommit::default());
        let labels = Arc::new(KeyLabels {
            group: "g".into(),
            policy_id: String::new(),
        });
        let l = store.lookup_key().clone();
        // 16 callers; caller i asks for scopes i and 100 + i % 4 (shared with 3 others)
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (store, gc, labels, l) = (store.clone(), gc.clone(), labels.clone(), l.clone());
                tokio::spawn(async move {
                    let ask = |v: usize| ScopeRequest {
                        scope: l.scope_hash("g", format!("s{v}").as_bytes()),
                        window_start_ms: 0,
                        expires_at_ms: 1,
                        subject: None,
                        labels: labels.clone(),
                    };
                    let answer = gc
                        .get_or_create(store.as_ref(), vec![ask(i), ask(100 + i % 4)])
                        .await
                        .unwrap();
                    (i, answer)
                })
            })
            .collect();
        let mut shared: Map<usize, Uuid> = Map::new();
        let mut created = 0;
        for t in tasks {
            let (i, answer) = t.await.unwrap();
            assert_eq!(answer.len(), 2);
            created += answer.iter().filter(|r| r.created).count();
            let link = answer[1].key.key_link;
            assert_eq!(*shared.entry(i % 4).or_insert(link), link, "caller {i}");
            assert_ne!(answer[0].key.key_link, link);
        }
        // 16 own scopes + 4 shared ones, each created exactly once
        assert_eq!(created, 20);
        let calls = gc.calls.load(Ordering::Relaxed);
        assert!(calls < 16, "{calls} store calls for 16 concurrent callers");
    }

    const CONTRACT: &str = r#"{"ref":{"handle":"t","name":"c","version":"1"},"keyField":"k",
        "piiFields":{"Email":1,"UserName":2}}"#;

    /// A job with one derived output for `purposes`, masking UserName.
    fn job(purposes: &[i32], cumulative: bool) -> BatchJob {
        let json = serde_json::json!({
            "source_data": {"data_connector_ref": {"name": "x"}, "data_type": {"fake": {}}},
            "consent": {"default_consent_levels": [0],
                        "consent_level_extractor": {"field": "Consent"}},
            "encryption": {"timestamp_config": {"field": "t", "format": "epoch_millis"}},
            "event_contract_ref": {"handle": "t", "name": "c", "version": "1"},
            "derived_data": [{
                "target": {"data_connector_ref": {"name": "x"}, "file_name": "d"},
                "consent_levels": purposes,
                "consent_level_type": if cumulative { "CUMULATIVE" } else { "GRANULAR" },
                "masked_fields": {"seed": "k", "field_patterns":
                    {"t/c/1": {"field_patterns": ["UserName"]}}}
            }]
        });
        // the job model deserializes `data_type` through typetag: build it without one
        let mut json = json;
        json["source_data"]
            .as_object_mut()
            .unwrap()
            .remove("data_type");
        serde_json::from_value(json).unwrap()
    }

    /// The plan of [`job`] on [`CONTRACT`], UserName masked.
    fn plan(purposes: &[i32], cumulative: bool) -> PrivacyPlan {
        let contract = DataContract::from_slice(CONTRACT.as_bytes(), Path::new("c.json")).unwrap();
        PrivacyPlan::new(
            &job(purposes, cumulative),
            &contract,
            &PlanOptions {
                retention_days: 1,
                universe: vec!["UserName".into()],
            },
            "job.json",
        )
        .unwrap()
    }

    /// What `rows` say to write: each row's record, slot texts (`None`: the source value) and
    /// metadata.
    #[allow(clippy::type_complexity)]
    fn rendered(rows: &OutputRows) -> Vec<(usize, Vec<Option<Vec<u8>>>, i64, Uuid, Vec<u8>)> {
        (0..rows.len())
            .map(|i| {
                let (record, edits, meta) = rows.row(i);
                let texts = edits
                    .iter()
                    .map(|e| match *e {
                        Edit::Keep => None,
                        Edit::Text(a, b) | Edit::Json(a, b) => Some(rows.edit_text(a, b).to_vec()),
                    })
                    .collect();
                let levels = rows.text(meta.consent_levels).to_vec();
                (record, texts, meta.timestamp_ms, meta.key_link, levels)
            })
            .collect()
    }

    fn levels_of(consent: &str) -> Vec<i32> {
        let mut out = Vec::new();
        let x = ConsentExtractor::new(&crate::job::ConsentConfig {
            default_consent_levels: vec![0],
            consent_level_extractor: Some(crate::job::ConsentLevelExtractor {
                field: "Consent".into(),
                field_patterns: None,
            }),
        })
        .unwrap();
        x.extract(Some(consent.as_bytes()), &mut out);
        out
    }

    fn consent_value() -> impl Strategy<Value = String> {
        prop_oneof![
            (0..4i32).prop_map(|l| l.to_string()),
            proptest::collection::vec(0..4i32, 0..4).prop_map(|v| format!(
                "[{}]",
                v.iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Just("-1".to_string()),
            Just("junk".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The transform copies the ciphertext of a value its key encrypted before in the batch:
        /// with few keys and values, repeated and interleaved, every cell must still be the
        /// value's own ciphertext under its record's key (a copy from another key or field, or a
        /// stale one, would decrypt to something else or not at all).
        #[test]
        fn every_ciphertext_is_its_own_records_value_under_its_own_key(
            records in proptest::collection::vec(("[a-c]", "[xy]{0,2}", "[xy]{1,2}"), 1..60),
        ) {
            let plan = plan(&[1], false);
            let f = plan.field_plan();
            let (k, t) = (f.index_of("k").unwrap(), f.index_of("t").unwrap());
            let (email, user) = (f.index_of("Email").unwrap(), f.index_of("UserName").unwrap());
            let mut batch = RecordBatch::new(f.len());
            for (i, (key, mail, name)) in records.iter().enumerate() {
                batch.begin_record(i as u64 + 1);
                for (slot, v) in [(k, key.as_str()), (t, "1700000000000"), (email, mail), (user, name)] {
                    batch.set_value(slot, v.as_bytes(), (0, 0), ValueKind::Text);
                }
                batch.end_record();
            }
            let mut rejects = Rejects::new(false);
            let mut classified = plan.classify(&batch, &mut rejects);
            let resolver = KeyResolver::new(Arc::new(MemStore::default()), "g".into(), 16);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let keys = rt.block_on(resolver.resolve(&plan, &batch, &mut classified)).unwrap();
            let mut enc = OutputRows::new(f.len());
            let mut derived = vec![OutputRows::new(f.len())];
            plan.transform(&batch, &classified, &keys, Some(&mut enc), &mut derived).unwrap();
            prop_assert_eq!(enc.len(), records.len());
            let mut plain = Vec::new();
            for i in 0..enc.len() {
                let (rec, edits, _) = enc.row(i);
                let (key, mail, name) = &records[rec];
                let row = &classified.rows[i];
                prop_assert_eq!(row.record as usize, rec);
                let aead = &keys.keys[row.key as usize].aead;
                // records of one key value share its key; of different ones, never
                for (j, other) in classified.rows.iter().enumerate() {
                    prop_assert_eq!(records[j].0 == *key, other.key == row.key);
                }
                for (slot, value) in [(email, mail), (user, name)] {
                    match edits[slot] {
                        Edit::Keep => prop_assert!(value.is_empty()),
                        Edit::Text(a, b) => {
                            let ct = enc.edit_text(a, b);
                            plain.clear();
                            aead.decrypt_base64_into(ct, &mut plain).unwrap();
                            prop_assert_eq!(&plain, value.as_bytes());
                            let mut direct = Vec::new();
                            aead.encrypt_base64_into(value.as_bytes(), &mut direct).unwrap();
                            prop_assert_eq!(ct, direct.as_slice());
                        }
                        Edit::Json(..) => prop_assert!(false, "a text value written as JSON"),
                    }
                }
            }
        }

        /// Whether or not the group is exclusive, the keys export (every batch's `first_use`
        /// that `claim_export` grants, asked in the batches' order) holds every key the batches
        /// use exactly once, also when the cache is too small to hold a key between two of its
        /// batches, and whatever the order the batches are resolved in. In a shared group, the
        /// keys come in the order the rows first use them, whatever the cache held.
        #[test]
        fn every_key_used_is_exported_once(
            batches in proptest::collection::vec(proptest::collection::vec("[a-f]", 1..12), 1..8),
            cache in 1..3usize,
            exclusive in any::<bool>(),
            order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let plan = plan(&[1], false);
            let f = plan.field_plan();
            let (k, t) = (f.index_of("k").unwrap(), f.index_of("t").unwrap());
            let mut resolver = KeyResolver::new(Arc::new(MemStore::default()), "g".into(), cache);
            if exclusive {
                resolver = resolver.exclusive_group();
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut resolved: Vec<Option<(BatchKeys, Vec<Uuid>)>> = batches.iter().map(|_| None).collect();
            for &b in order.iter().filter(|&&b| b < batches.len()) {
                let mut batch = RecordBatch::new(f.len());
                for (i, key) in batches[b].iter().enumerate() {
                    batch.begin_record(i as u64 + 1);
                    batch.set_value(k, key.as_bytes(), (0, 0), ValueKind::Text);
                    batch.set_value(t, b"1700000000000", (0, 0), ValueKind::Text);
                    batch.end_record();
                }
                let mut rejects = Rejects::new(false);
                let mut classified = plan.classify(&batch, &mut rejects);
                let keys = rt.block_on(resolver.resolve(&plan, &batch, &mut classified)).unwrap();
                let rows = classified.rows.iter().map(|r| keys.keys[r.key as usize].key.key_link).collect();
                resolved[b] = Some((keys, rows));
            }
            // the writer's part: in the batches' order
            let mut exported: Vec<Uuid> = Vec::new();
            let mut in_row_order: Vec<Uuid> = Vec::new();
            let mut used = std::collections::BTreeSet::new();
            for r in &resolved {
                let (keys, rows) = r.as_ref().unwrap();
                for k in &keys.first_use {
                    if resolver.claim_export(k.key_link) {
                        exported.push(k.key_link);
                    }
                }
                for &l in rows {
                    if used.insert(l) {
                        in_row_order.push(l);
                    }
                }
            }
            let distinct: std::collections::BTreeSet<Uuid> = exported.iter().copied().collect();
            prop_assert_eq!(distinct.len(), exported.len(), "a key exported twice");
            prop_assert_eq!(&distinct, &used);
            if !exclusive {
                prop_assert_eq!(&exported, &in_row_order);
            }
            prop_assert_eq!(resolver.used(), used.len() as u64);
            prop_assert_eq!(resolver.created(), used.len() as u64);
        }

        #[test]
        fn derived_rows_follow_consent_purposes_and_masks(
            records in proptest::collection::vec(
                ("[a-c]", "[xyz]{0,2}", "[pq]{1,2}", consent_value()), 1..40),
            purposes in proptest::collection::btree_set(0..4i32, 0..3),
            cumulative in any::<bool>(),
        ) {
            let purposes: Vec<i32> = purposes.into_iter().collect();
            let plan = plan(&purposes, cumulative);
            let f = plan.field_plan();
            let (k, t, c) = (f.index_of("k").unwrap(), f.index_of("t").unwrap(), f.index_of("Consent").unwrap());
            let (email, user) = (f.index_of("Email").unwrap(), f.index_of("UserName").unwrap());
            let mut batch = RecordBatch::new(f.len());
            for (i, (key, mail, name, consent)) in records.iter().enumerate() {
                batch.begin_record(i as u64 + 1);
                for (slot, v) in [(k, key.as_str()), (t, "1700000000000"), (c, consent), (email, mail), (user, name)] {
                    batch.set_value(slot, v.as_bytes(), (0, 0), ValueKind::Text);
                }
                batch.end_record();
            }
            let mut rejects = Rejects::new(false);
            let mut classified = plan.classify(&batch, &mut rejects);
            prop_assert!(rejects.is_empty());
            let resolver = KeyResolver::new(Arc::new(MemStore::default()), "g".into(), 16);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let keys = rt.block_on(resolver.resolve(&plan, &batch, &mut classified)).unwrap();
            let mut derived = vec![OutputRows::new(f.len())];
            plan.transform(&batch, &classified, &keys, None, &mut derived).unwrap();
            let out = &derived[0];

            // the same rows into the sets a job keeps between batches: one holding another
            // transform's rows, with a derived output too many, gives what a new one gives
            let mut kept = plan.output_rows(&batch, &classified, &keys, true).unwrap();
            kept.0.reserve_rows(3);
            kept.1.push(OutputRows::new(f.len()));
            plan.output_rows_into(&batch, &classified, &keys, false, &mut kept).unwrap();
            prop_assert!(kept.0.is_empty());
            prop_assert_eq!(kept.1.len(), 1);
            prop_assert_eq!(rendered(&kept.1[0]), rendered(out));

            // the oracle: which records are included, which purposes decrypted
            let covers = |levels: &[i32]| if cumulative {
                purposes.last().is_none_or(|m| levels.last().is_some_and(|l| l >= m))
            } else {
                purposes.iter().all(|p| levels.contains(p))
            };
            let decrypted = |purpose: i32| if cumulative {
                purposes.last().is_some_and(|m| purpose <= *m)
            } else {
                purposes.contains(&purpose)
            };
            let expected: Vec<usize> = records
                .iter()
                .enumerate()
                .filter(|(_, r)| covers(&levels_of(&r.3)))
                .map(|(i, _)| i)
                .collect();
            let got: Vec<usize> = (0..out.len()).map(|i| out.row(i).0).collect();
            prop_assert_eq!(&got, &expected);

            let mut mask_of: Map<String, Vec<u8>> = Map::new();
            for i in 0..out.len() {
                let (rec, edits, _) = out.row(i);
                let (_, mail, name, _) = &records[rec];
                // Email (purpose 1): plaintext iff decrypted here (empty stays empty)
                match edits[email] {
                    Edit::Keep => prop_assert!(mail.is_empty()),
                    Edit::Text(a, b) if decrypted(1) => {
                        prop_assert_eq!(out.edit_text(a, b), mail.as_bytes());
                    }
                    Edit::Text(a, b) => {
                        prop_assert!(out.edit_text(a, b).starts_with(b"A"), "ciphertext");
                    }
                    Edit::Json(..) => prop_assert!(false, "a text value restored as JSON"),
                }
                // UserName (purpose 2, masked): the mask where decrypted, else ciphertext
                let Edit::Text(a, b) = edits[user] else {
                    prop_assert!(false, "UserName is never written in the clear");
                    unreachable!()
                };
                let text = out.edit_text(a, b).to_vec();
                if decrypted(2) {
                    prop_assert_eq!(text.len(), 64);
                    prop_assert!(text.iter().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
                    // a mask is equal across rows exactly when the plaintext is equal
                    for (other, m) in &mask_of {
                        prop_assert_eq!(other == name, *m == text);
                    }
                    mask_of.insert(name.clone(), text);
                } else {
                    prop_assert!(text.starts_with(b"A"), "ciphertext");
                }
            }
        }
    }
}
