//! Fail-closed checks (SPEC §8): a mistake in a job, a contract or a command line must refuse the
//! job before any data flows, never leak plaintext or overwrite data.
//!
//! Two checks serve every job and `keylink decrypt`:
//!
//! - [`check_locations`]: no output may be the same object as another output, an input, or the
//!   keys export. Objects are compared by their resolved [`ObjectLocation`] (store kind, bucket,
//!   canonical path — see [`ConnectorConfig::location`](crate::connector::ConnectorConfig::location)),
//!   never by connector name, so two connectors on one root, or a symlink to it, cannot hide a
//!   collision. An output that the job's own input selection would pick up (under the source
//!   prefix and matching its glob) is refused as well: the next run would read ciphertext or
//!   plaintext copies back as input.
//! - [`check_header`]: every field the contract or the job names must be a column of a CSV
//!   input's header — a renamed column (`E-mail` for `Email`) would otherwise go out unprotected —
//!   and the input must not already carry the `strmMeta.*` columns the outputs add. For JSON Lines,
//!   where a record may lack a field, the engine counts per input which named fields no record
//!   carried ([`FieldPresence`]) and reports them (exit code 1).

use globset::GlobMatcher;

use crate::connector::ObjectLocation;
use crate::contract::DataContract;
use crate::derive::match_fields;
use crate::error::{Error, Result};
use crate::job::BatchJob;
use crate::record::RecordBatch;

/// The columns every encrypted and derived CSV output appends (SPEC §4).
pub const META_COLUMNS: [&str; 4] = [
    "strmMeta.eventContractRef",
    "strmMeta.timestamp",
    "strmMeta.keyLink",
    "strmMeta.consentLevels",
];

/// A field that a contract or job names, with the setting that names it (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedField {
    /// The field (CSV column or `/`-separated JSON path).
    pub field: String,
    /// Where it is named: `the contract's keyField`, `job.json: derived_data[0].masked_fields…`.
    pub setting: String,
}

/// Every field `job` and `contract` name by exact name: the contract's keyField,
/// dataSubjectField, PII fields and validations; the job's timestamp field, consent field and the
/// exact (non-glob) masked-field names. Globs are checked where they are matched.
pub fn named_fields(job: &BatchJob, contract: &DataContract, job_file: &str) -> Vec<NamedField> {
    let mut out = contract_fields(contract);
    let mut push = |field: &str, setting: String| {
        out.push(NamedField {
            field: field.to_string(),
            setting,
        })
    };
    push(
        &job.encryption.timestamp_config.field,
        format!("{job_file}: encryption.timestamp_config.field"),
    );
    if let Some(x) = &job.consent.consent_level_extractor {
        push(
            &x.field,
            format!("{job_file}: consent.consent_level_extractor.field"),
        );
    }
    for (i, d) in job.derived_data.iter().enumerate() {
        let Some(m) = &d.masked_fields else { continue };
        for (r, list) in &m.field_patterns {
            for (j, p) in list.field_patterns.iter().enumerate() {
                if !is_glob(p) {
                    push(
                        p,
                        format!(
                            "{job_file}: derived_data[{i}].masked_fields.field_patterns.{r}.\
                             field_patterns[{j}]"
                        ),
                    );
                }
            }
        }
    }
    out
}

/// The fields a contract names: keyField, dataSubjectField, PII fields, validations.
pub fn contract_fields(contract: &DataContract) -> Vec<NamedField> {
    let mut out = vec![NamedField {
        field: contract.key_field.clone(),
        setting: "the contract's keyField".into(),
    }];
    if let Some(s) = &contract.data_subject_field {
        out.push(NamedField {
            field: s.clone(),
            setting: "the contract's dataSubjectField".into(),
        });
    }
    for p in &contract.pii_fields {
        out.push(NamedField {
            field: p.field.clone(),
            setting: "the contract (a PII field)".into(),
        });
    }
    for (i, v) in contract.validations.iter().enumerate() {
        out.push(NamedField {
            field: v.field.clone(),
            setting: format!("the contract's validations[{i}]"),
        });
    }
    out
}

/// Whether a field pattern is a glob rather than an exact name.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Checks a CSV input's header against the named fields: each must be a column, and when
/// `adds_meta` (the job writes encrypted or derived data) none of [`META_COLUMNS`] may be one
/// already. `object` names the input in the message; `globs` (with the setting naming each) must
/// each match at least one column.
pub fn check_header(
    object: &str,
    columns: &[String],
    named: &[NamedField],
    globs: &[(String, String)],
    adds_meta: bool,
) -> Result<()> {
    let header = || {
        let mut shown: Vec<&str> = columns.iter().map(String::as_str).take(40).collect();
        if columns.len() > 40 {
            shown.push("…");
        }
        shown.join(", ")
    };
    for n in named {
        if !columns.contains(&n.field) {
            return Err(Error::config(format!(
                "{object}: the header has no column '{}', which {} names (a renamed or misspelt \
                 column would go out unprotected); the header's columns: {}",
                n.field,
                n.setting,
                header()
            )));
        }
    }
    for (pattern, setting) in globs {
        if match_fields(pattern, columns)?.is_empty() {
            return Err(Error::config(format!(
                "{setting}: {pattern:?} matches no column of {object}; the header's columns: {}",
                header()
            )));
        }
    }
    if adds_meta
        && let Some(m) = META_COLUMNS
            .iter()
            .find(|m| columns.iter().any(|c| c == *m))
    {
        return Err(Error::config(format!(
            "{object}: the input already has the column '{m}', which every encrypted and derived \
             output adds; is this keylink output being processed again? Remove the strmMeta.* \
             columns first"
        )));
    }
    Ok(())
}

/// One object a job reads or writes, for [`check_locations`].
#[derive(Debug, Clone)]
pub struct Place {
    /// What it is in the job: `encrypted_data.target`, `the keys export`, `--output`.
    pub role: String,
    /// Where it really is.
    pub location: ObjectLocation,
}

/// The objects a job's input selection picks up: everything under `prefix` whose path relative
/// to it matches `glob` (no glob: everything).
#[derive(Debug, Clone)]
pub struct Selection {
    /// The source prefix, resolved.
    pub prefix: ObjectLocation,
    /// The `file_name` glob, compiled.
    pub glob: Option<GlobMatcher>,
    /// How the job names the selection (`source_data`).
    pub role: String,
}

impl Selection {
    /// Whether `loc` is (or would be, once written) selected as an input.
    pub fn selects(&self, loc: &ObjectLocation) -> bool {
        if !loc.is_under(&self.prefix) {
            return false;
        }
        let p = self.prefix.key.trim_end_matches('/');
        let rel = loc.key[p.len()..].trim_start_matches('/');
        match &self.glob {
            Some(g) => g.is_match(rel),
            None => true,
        }
    }
}

/// Refuses outputs that collide: two outputs on one object, an output on an input (or on an
/// object the input selection would read), an output on any other object the job reads.
pub fn check_locations(
    outputs: &[Place],
    reads: &[Place],
    selection: Option<&Selection>,
) -> Result<()> {
    for (i, a) in outputs.iter().enumerate() {
        for b in &outputs[i + 1..] {
            if a.location == b.location {
                return Err(Error::config(format!(
                    "{} and {} are the same object ({}); each output needs its own",
                    a.role, b.role, a.location
                )));
            }
        }
        for r in reads {
            if a.location == r.location {
                return Err(Error::config(format!(
                    "{} is {} ({}): writing it would destroy what is being read",
                    a.role, r.role, a.location
                )));
            }
        }
        if let Some(s) = selection
            && s.selects(&a.location)
        {
            return Err(Error::config(format!(
                "{} ({}) lies where {} selects its inputs: it would overwrite an input or be read \
                 back as one by the next run; write it under another prefix or name",
                a.role, a.location, s.role
            )));
        }
    }
    Ok(())
}

/// Which of the watched slots any record of an input carried (JSON Lines: a record may lack a
/// field; a field that no record carries is most likely misspelt in the contract).
#[derive(Debug, Clone, Default)]
pub struct FieldPresence {
    seen: Vec<bool>,
}

impl FieldPresence {
    /// Nothing seen yet, for `n_slots` slots.
    pub fn new(n_slots: usize) -> Self {
        FieldPresence {
            seen: vec![false; n_slots],
        }
    }

    /// Records which slots the batch's records carry (a value or a JSON null).
    pub fn observe(&mut self, batch: &RecordBatch) {
        if self.seen.iter().all(|s| *s) {
            return;
        }
        for rec in batch.records() {
            for (i, slot) in rec.slots().iter().enumerate() {
                if !matches!(slot, crate::record::Slot::Missing) {
                    self.seen[i] = true;
                }
            }
        }
    }

    /// Merges another observation of the same slots.
    pub fn merge(&mut self, other: &FieldPresence) {
        for (a, b) in self.seen.iter_mut().zip(&other.seen) {
            *a |= *b;
        }
    }

    /// Whether slot `i` was seen.
    pub fn seen(&self, i: usize) -> bool {
        self.seen.get(i).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(key: &str) -> ObjectLocation {
        ObjectLocation::new("file", "", key)
    }

    fn place(role: &str, key: &str) -> Place {
        Place {
            role: role.into(),
            location: loc(key),
        }
    }

    #[test]
    fn outputs_on_one_object_are_refused() {
        let e = check_locations(
            &[
                place("encrypted", "/d/out/a.csv"),
                place("derived[0]", "/d/out/a.csv"),
            ],
            &[],
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("encrypted and derived[0] are the same object"),
            "{e}"
        );
        assert!(
            check_locations(
                &[
                    place("encrypted", "/d/out/a.csv"),
                    place("derived[0]", "/d/out/b.csv")
                ],
                &[],
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn an_output_on_an_input_is_refused() {
        let e = check_locations(
            &[place("encrypted", "/d/in.csv")],
            &[place("the input", "/d/in.csv")],
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("would destroy"), "{e}");
    }

    #[test]
    fn an_output_the_selection_would_read_is_refused() {
        let sel = Selection {
            prefix: loc("/d/data"),
            glob: Some(crate::connector::compile_glob("*.csv").unwrap()),
            role: "source_data".into(),
        };
        assert!(sel.selects(&loc("/d/data/x.csv")));
        assert!(
            !sel.selects(&loc("/d/data/out/x.csv")),
            "* does not cross /"
        );
        assert!(!sel.selects(&loc("/d/data-other/x.csv")));
        assert!(!sel.selects(&loc("/d/data/x.jsonl")));
        let e =
            check_locations(&[place("encrypted", "/d/data/enc.csv")], &[], Some(&sel)).unwrap_err();
        assert!(e.to_string().contains("selects its inputs"), "{e}");
        assert!(
            check_locations(
                &[place("encrypted", "/d/data/out/enc.csv")],
                &[],
                Some(&sel)
            )
            .is_ok()
        );
    }

    #[test]
    fn header_checks_name_field_setting_and_never_values() {
        let cols: Vec<String> = ["SessionId", "E-mail"].map(String::from).to_vec();
        let named = vec![
            NamedField {
                field: "SessionId".into(),
                setting: "the contract's keyField".into(),
            },
            NamedField {
                field: "Email".into(),
                setting: "the contract (a PII field)".into(),
            },
        ];
        let e = check_header("/d/in.csv", &cols, &named, &[], true).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("no column 'Email'") && m.contains("PII field") && m.contains("/d/in.csv"),
            "{m}"
        );
        let cols: Vec<String> = ["SessionId", "Email", "strmMeta.keyLink"]
            .map(String::from)
            .to_vec();
        let e = check_header("/d/in.csv", &cols, &named, &[], true).unwrap_err();
        assert!(e.to_string().contains("strmMeta.keyLink"), "{e}");
        assert!(check_header("/d/in.csv", &cols, &named, &[], false).is_ok());
        let globs = vec![("User*".to_string(), "derived_data[0]".to_string())];
        let e = check_header("/d/in.csv", &cols[..2], &named, &globs, true).unwrap_err();
        assert!(e.to_string().contains("matches no column"), "{e}");
    }
}
