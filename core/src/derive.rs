//! Purpose-bound derived datasets (SPEC §3): which records, which fields in the clear, which
//! fields masked.
//!
//! A derived dataset asks for purposes R (`consent_levels`) under a [`ConsentLevelType`]:
//!
//! - `GRANULAR` (the default): a record is included iff every level of R is among its consent
//!   levels; PII fields whose purpose is in R are decrypted.
//! - `CUMULATIVE`: consent for level n implies every level ≤ n; a record is included iff
//!   max(R) ≤ max(its levels); PII fields with purpose ≤ max(R) are decrypted.
//!
//! Other PII fields stay ciphertext. A masked field becomes lowercase hex HMAC-SHA256(seed,
//! plaintext): a masked PII field only where its purpose is decrypted in this output (else it
//! stays ciphertext), a masked non-PII field always; empty values stay empty. A missing seed is an
//! error, never a default.

use crate::contract::DataContract;
use crate::crypto::mask::Masker;
use crate::error::{Error, Result};
use crate::job::{ConsentLevelType, MaskedFields};
use crate::record::{FieldPlan, OutputRows, ValueKind};

/// A derived dataset's compiled settings.
#[derive(Debug, Clone)]
pub struct DerivedPlan {
    /// `derived_data[i]`, for messages and the summary.
    pub name: String,
    levels: Vec<i32>,
    kind: ConsentLevelType,
    masker: Option<Masker>,
    /// Slots masked in this output.
    masked: Vec<usize>,
}

/// What a derived output does with one PII field of an included record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiiTreatment {
    /// Plaintext.
    Decrypt,
    /// Keyed hash of the plaintext.
    Mask,
    /// Ciphertext, as in the encrypted output.
    Encrypt,
}

impl DerivedPlan {
    /// Compiles one derived dataset. Masked fields get slots in `fields`. `universe` lists the
    /// field names patterns are matched against (the contract's schema, else the input's header,
    /// else the fields the contract names); `at` names the setting in errors
    /// (`job.json: derived_data[0]`).
    pub fn new(
        at: &str,
        levels: &[i32],
        kind: ConsentLevelType,
        masked: Option<&MaskedFields>,
        contract: &DataContract,
        universe: &[String],
        fields: &mut FieldPlan,
    ) -> Result<Self> {
        if let Some(l) = levels.iter().find(|l| **l < 0) {
            return Err(Error::config(format!(
                "{at}.consent_levels: levels must be >= 0, found {l}"
            )));
        }
        let mut levels = levels.to_vec();
        levels.sort_unstable();
        levels.dedup();
        let mut plan = DerivedPlan {
            name: at.rsplit(": ").next().unwrap_or(at).to_string(),
            levels,
            kind,
            masker: None,
            masked: Vec::new(),
        };
        let Some(m) = masked else { return Ok(plan) };
        match m.hash_type.as_deref() {
            None | Some("HMAC_SHA256") => {}
            Some(other) => {
                return Err(Error::not_supported(format!(
                    "{at}.masked_fields.hash_type: {other:?} is not supported; use \"HMAC_SHA256\""
                )));
            }
        }
        let wanted = contract.contract_ref.to_string();
        let mut patterns: Vec<&str> = Vec::new();
        for (r, list) in &m.field_patterns {
            if *r != wanted {
                return Err(Error::config(format!(
                    "{at}.masked_fields.field_patterns: {r:?} is not the job's contract ({wanted}); \
                     patterns for another contract would be silently ignored"
                )));
            }
            patterns.extend(list.field_patterns.iter().map(String::as_str));
        }
        if patterns.is_empty() {
            return Ok(plan);
        }
        let seed = m
            .seed
            .as_ref()
            .map(|s| s.expose().as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::config(format!(
                    "{at}.masked_fields.seed: missing; masking needs a secret seed (a missing seed \
                     never becomes a default)"
                ))
            })?;
        plan.masker = Some(Masker::new(seed.as_bytes()));
        for (i, pattern) in patterns.iter().enumerate() {
            let matched = match_fields(pattern, universe).map_err(|e| {
                e.context(format!(
                    "{at}.masked_fields.field_patterns.{wanted}.field_patterns[{i}]"
                ))
            })?;
            if matched.is_empty() {
                return Err(Error::config(format!(
                    "{at}.masked_fields.field_patterns.{wanted}.field_patterns[{i}]: {pattern:?} \
                     matches no field; known fields: {}",
                    universe.join(", ")
                )));
            }
            for f in matched {
                let slot = fields.slot(f, false);
                if !plan.masked.contains(&slot) {
                    plan.masked.push(slot);
                }
            }
        }
        plan.masked.sort_unstable();
        Ok(plan)
    }

    /// Whether a record with consent `record_levels` (sorted) belongs in this output.
    pub fn includes(&self, record_levels: &[i32]) -> bool {
        match self.kind {
            ConsentLevelType::Granular => self
                .levels
                .iter()
                .all(|l| record_levels.binary_search(l).is_ok()),
            ConsentLevelType::Cumulative => match self.levels.last() {
                None => true,
                Some(max) => record_levels.last().is_some_and(|m| m >= max),
            },
        }
    }

    /// Whether PII of `purpose` is decrypted in this output.
    pub fn decrypts(&self, purpose: i32) -> bool {
        match self.kind {
            ConsentLevelType::Granular => self.levels.binary_search(&purpose).is_ok(),
            ConsentLevelType::Cumulative => self.levels.last().is_some_and(|m| purpose <= *m),
        }
    }

    /// Whether slot `slot` is masked in this output.
    pub fn is_masked(&self, slot: usize) -> bool {
        self.masked.binary_search(&slot).is_ok()
    }

    /// The masked slots.
    pub fn masked_slots(&self) -> &[usize] {
        &self.masked
    }

    /// What happens to a PII field of `purpose` in slot `slot`.
    pub fn pii_treatment(&self, slot: usize, purpose: i32) -> PiiTreatment {
        if !self.decrypts(purpose) {
            PiiTreatment::Encrypt
        } else if self.is_masked(slot) {
            PiiTreatment::Mask
        } else {
            PiiTreatment::Decrypt
        }
    }

    /// The masker (present when any field is masked).
    pub fn masker(&self) -> Option<&Masker> {
        self.masker.as_ref()
    }
}

/// A decrypted value that should be JSON (its field is listed in `strmMeta.jsonFields`) but is
/// not one JSON value on one line: the metadata or the ciphertext was tampered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAJsonValue;

/// Writes a PII value in the clear as slot `slot` of the last row of `out`: the one place both a
/// job's derived output and `keylink decrypt` restore a decrypted value, so the two agree byte
/// for byte.
///
/// `plaintext` is what the ciphertext encrypts: the text of a CSV field or JSON string
/// ([`ValueKind::Text`], written back as text — in JSON Lines a string with canonical escapes),
/// or the exact JSON text of a JSON number, boolean, object or array ([`ValueKind::Json`],
/// written back as that JSON, so `"age":42` stays a number). A `Json` plaintext must be one JSON
/// value without a line break, else nothing is written and [`NotAJsonValue`] is returned.
pub fn restore_plaintext(
    out: &mut OutputRows,
    slot: usize,
    plaintext: &[u8],
    kind: ValueKind,
) -> std::result::Result<(), NotAJsonValue> {
    let start = out.values_len();
    match kind {
        ValueKind::Text => {
            out.values_mut().extend_from_slice(plaintext);
            out.replace_from(slot, start);
        }
        ValueKind::Json => {
            // (serde_json skips strings without checking their UTF-8 when it ignores them)
            if plaintext.contains(&b'\n')
                || std::str::from_utf8(plaintext).is_err()
                || serde_json::from_slice::<serde::de::IgnoredAny>(plaintext).is_err()
            {
                return Err(NotAJsonValue);
            }
            out.values_mut().extend_from_slice(plaintext);
            out.replace_json_from(slot, start);
        }
    }
    Ok(())
}

/// The fields of `universe` a pattern selects: an exact name (also when the universe does not list
/// it: JSON paths need no header), or a glob where `*` matches any run of characters (including
/// `/`) and `?` one character.
pub fn match_fields<'u>(pattern: &'u str, universe: &'u [String]) -> Result<Vec<&'u str>> {
    if !pattern.contains(['*', '?', '[']) {
        return Ok(vec![pattern]);
    }
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map_err(|e| Error::config(format!("invalid field pattern {pattern:?}: {}", e.kind())))?
        .compile_matcher();
    Ok(universe
        .iter()
        .map(String::as_str)
        .filter(|f| glob.is_match(f))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn contract() -> DataContract {
        DataContract::from_slice(
            br#"{"ref":{"handle":"h","name":"n","version":"1"},"keyField":"k",
                 "piiFields":{"Email":1,"UserName":2}}"#,
            Path::new("c.json"),
        )
        .unwrap()
    }

    fn plan(levels: &[i32], kind: ConsentLevelType) -> DerivedPlan {
        DerivedPlan::new(
            "derived_data[0]",
            levels,
            kind,
            None,
            &contract(),
            &[],
            &mut FieldPlan::new(),
        )
        .unwrap()
    }

    /// Issue #7: one function restores a decrypted value, as text or as the JSON it was.
    #[test]
    fn jsonl_non_string_pii_restore_plaintext() {
        let mut out = OutputRows::new(2);
        let meta = crate::record::RowMeta {
            timestamp_ms: 0,
            key_link: uuid::Uuid::nil(),
            consent_levels: (0, 0),
            json_fields: (0, 0),
        };
        out.push_row(0, meta);
        restore_plaintext(&mut out, 0, b"42", ValueKind::Text).unwrap();
        restore_plaintext(&mut out, 1, br#"{"a": [1, true]}"#, ValueKind::Json).unwrap();
        let (_, edits, _) = out.row(0);
        let crate::record::Edit::Text(a, b) = edits[0] else {
            panic!("text")
        };
        assert_eq!(out.edit_text(a, b), b"42");
        let crate::record::Edit::Json(a, b) = edits[1] else {
            panic!("json")
        };
        assert_eq!(out.edit_text(a, b), br#"{"a": [1, true]}"#);
        // what is not one JSON value on one line is refused, and nothing is written
        out.push_row(1, meta);
        for bad in [&b"not json"[..], b"1 2", b"[1,\n2]", b"", b"\"\xff\""] {
            assert_eq!(
                restore_plaintext(&mut out, 0, bad, ValueKind::Json),
                Err(NotAJsonValue)
            );
        }
        assert!(out.row(1).1.iter().all(|e| *e == crate::record::Edit::Keep));
    }

    #[test]
    fn granular_needs_every_level() {
        let p = plan(&[2, 1], ConsentLevelType::Granular);
        assert!(p.includes(&[0, 1, 2]));
        assert!(p.includes(&[1, 2]));
        assert!(!p.includes(&[2]));
        assert!(!p.includes(&[]));
        assert!(p.decrypts(1) && p.decrypts(2) && !p.decrypts(0) && !p.decrypts(3));
        // no purposes: every record, nothing decrypted
        let none = plan(&[], ConsentLevelType::Granular);
        assert!(none.includes(&[]));
        assert!(!none.decrypts(0));
    }

    #[test]
    fn cumulative_compares_maxima() {
        let p = plan(&[1, 2], ConsentLevelType::Cumulative);
        assert!(p.includes(&[3]));
        assert!(p.includes(&[2]));
        assert!(!p.includes(&[0, 1]));
        assert!(!p.includes(&[]));
        assert!(p.decrypts(0) && p.decrypts(2) && !p.decrypts(3));
    }

    fn masked(seed: Option<&str>, r: &str, patterns: &[&str]) -> MaskedFields {
        let json = serde_json::json!({
            "hash_type": "HMAC_SHA256",
            "seed": seed,
            "field_patterns": { r: { "field_patterns": patterns } }
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn masking_resolves_patterns_and_needs_a_seed() {
        let universe: Vec<String> = ["Email", "UserName", "UserAgent", "Page"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut fields = FieldPlan::new();
        let email = fields.slot("Email", false);
        let m = masked(Some("s3cr3t"), "h/n/1", &["User*", "Email"]);
        let p = DerivedPlan::new(
            "job.json: derived_data[0]",
            &[1],
            ConsentLevelType::Granular,
            Some(&m),
            &contract(),
            &universe,
            &mut fields,
        )
        .unwrap();
        assert_eq!(p.name, "derived_data[0]");
        let user = fields.index_of("UserName").unwrap();
        let agent = fields.index_of("UserAgent").unwrap();
        assert!(p.is_masked(email) && p.is_masked(user) && p.is_masked(agent));
        // Email (purpose 1) is decrypted here and masked; UserName (2) stays ciphertext
        assert_eq!(p.pii_treatment(email, 1), PiiTreatment::Mask);
        assert_eq!(p.pii_treatment(user, 2), PiiTreatment::Encrypt);
        assert!(!format!("{p:?}").contains("s3cr3t"));

        let new = |m: &MaskedFields| {
            DerivedPlan::new(
                "d",
                &[1],
                ConsentLevelType::Granular,
                Some(m),
                &contract(),
                &universe,
                &mut FieldPlan::new(),
            )
        };
        let e = new(&masked(None, "h/n/1", &["Email"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("seed"), "{e}");
        let e = new(&masked(Some(""), "h/n/1", &["Email"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("seed"), "{e}");
        let e = new(&masked(Some("s"), "h/n/1", &["Nope*"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("matches no field"), "{e}");
        let e = new(&masked(Some("s"), "other/ref/1", &["Email"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the job's contract"), "{e}");
    }
}
