//! A record's consent levels (SPEC §3).
//!
//! With a `consent_level_extractor { field, field_patterns }`: the mapping of the field's value
//! when the mapping has it. Without a mapping: the value parsed as an int (`"2"`) or an int array
//! (`"[1,2]"`). Otherwise — no extractor, field missing, value unknown or malformed, a negative
//! level — the `default_consent_levels`, and the record is counted as having fallen back to the
//! default. Levels are reported sorted and without duplicates.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::job::ConsentConfig;

/// How a record's consent levels were determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentOrigin {
    /// From the record's consent field.
    Record,
    /// The default: no extractor is configured.
    Default,
    /// The default, because the record's consent field was missing, unknown or malformed.
    Fallback,
}

/// Extracts consent levels; built once per job.
#[derive(Debug, Clone)]
pub struct ConsentExtractor {
    default: Vec<i32>,
    field: Option<String>,
    mapping: Option<HashMap<Vec<u8>, Vec<i32>>>,
}

impl ConsentExtractor {
    /// Checks and compiles a job's consent config.
    pub fn new(config: &ConsentConfig) -> Result<Self> {
        let mut default = config.default_consent_levels.clone();
        if let Some(l) = default.iter().find(|l| **l < 0) {
            return Err(Error::config(format!(
                "consent.default_consent_levels: levels must be >= 0, found {l}"
            )));
        }
        normalize(&mut default);
        let (field, mapping) = match &config.consent_level_extractor {
            None => (None, None),
            Some(x) => {
                if x.field.is_empty() {
                    return Err(Error::config(
                        "consent.consent_level_extractor.field: must name a field",
                    ));
                }
                let mapping = match &x.field_patterns {
                    None => None,
                    Some(p) if p.is_empty() => None,
                    Some(p) => {
                        let mut m = HashMap::with_capacity(p.len());
                        for (value, levels) in p {
                            let mut l = levels.consent_levels.clone();
                            if let Some(bad) = l.iter().find(|l| **l < 0) {
                                return Err(Error::config(format!(
                                    "consent.consent_level_extractor.field_patterns.{value}: \
                                     levels must be >= 0, found {bad}"
                                )));
                            }
                            normalize(&mut l);
                            m.insert(value.as_bytes().to_vec(), l);
                        }
                        Some(m)
                    }
                };
                (Some(x.field.clone()), mapping)
            }
        };
        Ok(ConsentExtractor {
            default,
            field,
            mapping,
        })
    }

    /// The consent field, if any (the job plans a slot for it).
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The default levels.
    pub fn default_levels(&self) -> &[i32] {
        &self.default
    }

    /// The levels of a record whose consent field holds `value` (`None`: missing or null),
    /// written to `out` (cleared first).
    pub fn extract(&self, value: Option<&[u8]>, out: &mut Vec<i32>) -> ConsentOrigin {
        out.clear();
        if self.field.is_none() {
            out.extend_from_slice(&self.default);
            return ConsentOrigin::Default;
        }
        let found = value.and_then(|v| match &self.mapping {
            Some(m) => m.get(v).map(|l| {
                out.extend_from_slice(l);
            }),
            None => parse_levels(v, out),
        });
        match found {
            Some(()) => ConsentOrigin::Record,
            None => {
                out.clear();
                out.extend_from_slice(&self.default);
                ConsentOrigin::Fallback
            }
        }
    }
}

fn normalize(levels: &mut Vec<i32>) {
    levels.sort_unstable();
    levels.dedup();
}

/// Parses `2`, ` 2 `, `[1,2]`, `[ 1, 2 ]`, `[]` into `out` (sorted, deduplicated). `None` for
/// anything else, including negative levels.
pub(crate) fn parse_levels(v: &[u8], out: &mut Vec<i32>) -> Option<()> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let parse_one = |t: &str| -> Option<i32> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if !inner.trim().is_empty() {
            for part in inner.split(',') {
                out.push(parse_one(part)?);
            }
        }
    } else {
        out.push(parse_one(s)?);
    }
    normalize(out);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ConsentLevelExtractor, ConsentLevels};
    use std::collections::BTreeMap;

    fn cfg(default: &[i32], field: Option<&str>, map: &[(&str, &[i32])]) -> ConsentConfig {
        ConsentConfig {
            default_consent_levels: default.to_vec(),
            consent_level_extractor: field.map(|f| ConsentLevelExtractor {
                field: f.to_string(),
                field_patterns: if map.is_empty() {
                    None
                } else {
                    Some(
                        map.iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    ConsentLevels {
                                        consent_levels: v.to_vec(),
                                    },
                                )
                            })
                            .collect::<BTreeMap<_, _>>(),
                    )
                },
            }),
        }
    }

    #[test]
    fn mapping_parsing_and_default() {
        let mut out = Vec::new();
        let x = ConsentExtractor::new(&cfg(&[0], Some("c"), &[("marketing", &[2, 1])])).unwrap();
        assert_eq!(
            x.extract(Some(b"marketing"), &mut out),
            ConsentOrigin::Record
        );
        assert_eq!(out, [1, 2]);
        // mapping given: a value not in it falls back, even if it parses as a number
        assert_eq!(x.extract(Some(b"2"), &mut out), ConsentOrigin::Fallback);
        assert_eq!(out, [0]);
        assert_eq!(x.extract(None, &mut out), ConsentOrigin::Fallback);

        let x = ConsentExtractor::new(&cfg(&[0], Some("c"), &[])).unwrap();
        for (v, want) in [
            (&b"2"[..], &[2][..]),
            (b"[1,2]", &[1, 2]),
            (b" [ 2 , 1, 2 ] ", &[1, 2]),
            (b"[]", &[]),
        ] {
            assert_eq!(x.extract(Some(v), &mut out), ConsentOrigin::Record);
            assert_eq!(out, want);
        }
        for bad in [
            &b"-1"[..],
            b"[1,-2]",
            b"[1,",
            b"two",
            b"",
            b"1.5",
            b"[1,,2]",
            b"\xff",
        ] {
            assert_eq!(x.extract(Some(bad), &mut out), ConsentOrigin::Fallback);
            assert_eq!(out, [0]);
        }

        let x = ConsentExtractor::new(&cfg(&[3, 1], None, &[])).unwrap();
        assert_eq!(x.extract(Some(b"2"), &mut out), ConsentOrigin::Default);
        assert_eq!(out, [1, 3]);
    }

    #[test]
    fn negative_levels_in_config_are_errors() {
        assert!(ConsentExtractor::new(&cfg(&[-1], None, &[])).is_err());
        assert!(ConsentExtractor::new(&cfg(&[0], Some("c"), &[("x", &[-2])])).is_err());
        assert!(ConsentExtractor::new(&cfg(&[0], Some(""), &[])).is_err());
    }
}
