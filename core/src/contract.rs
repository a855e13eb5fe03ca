//! Data contracts: the data's shape and its privacy implications.
//!
//! A contract file is JSON or YAML, with camelCase or snake_case keys, optionally wrapped as
//! `{"dataContract": {...}}` (what the original system's CLI prints). What keylink uses:
//!
//! - `ref` (`handle/name/version`), `keyField` (required), `dataSubjectField` (optional);
//! - PII fields and their purpose levels from `fieldMetadata` (`personalDataConfig.isPii` +
//!   `purposeLevel`) and the legacy `piiFields` map; `fieldMetadata` wins where both name a field;
//! - `validations` of type `regex` (unanchored unless the regex anchors);
//! - `schema` (optional): a simple schema (`nodes`) or a JSON Schema (`properties`), used to know
//!   the contract's field names.
//!
//! Other keys the original system writes (`id`, `state`, `metadata`, …) are accepted and ignored;
//! an unknown key is an error, because a misspelt privacy setting silently ignored is a data leak.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use regex::bytes::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::error::{Error, ErrorKind, Result};

/// A contract reference `handle/name/version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractRef {
    /// The owner's handle.
    pub handle: String,
    /// The contract's name.
    pub name: String,
    /// Its (semantic) version.
    pub version: String,
}

impl fmt::Display for ContractRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.handle, self.name, self.version)
    }
}

impl ContractRef {
    /// Parses `handle/name/version`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [h, n, v] if !h.is_empty() && !n.is_empty() && !v.is_empty() => Ok(ContractRef {
                handle: h.to_string(),
                name: n.to_string(),
                version: v.to_string(),
            }),
            _ => Err(Error::config(format!(
                "invalid contract reference {s:?}: expected handle/name/version"
            ))),
        }
    }
}

/// A PII field and its purpose level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiField {
    /// Field name or `/` path.
    pub field: String,
    /// The purpose (consent level) that allows decrypting it.
    pub purpose_level: i32,
}

/// A regex validation.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Field name or `/` path.
    pub field: String,
    /// The compiled regex (matched against the field's UTF-8 bytes).
    pub regex: Regex,
}

/// A parsed, checked data contract.
#[derive(Debug, Clone)]
pub struct DataContract {
    /// Its reference.
    pub contract_ref: ContractRef,
    /// The field that ties records into a sequence.
    pub key_field: String,
    /// The field naming the person, if any.
    pub data_subject_field: Option<String>,
    /// PII fields, sorted by field name.
    pub pii_fields: Vec<PiiField>,
    /// Validations, in contract order.
    pub validations: Vec<Validation>,
    /// Field names declared by the schema, if the contract has one (`a/b` for nested fields).
    pub schema_fields: Option<Vec<String>>,
}

// ---- wire model ----

/// A data contract wrapped as the original system's CLI prints it.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::with_snake_case_aliases)]
struct Wrapped {
    /// The contract.
    #[serde(rename = "dataContract", alias = "data_contract")]
    data_contract: RawContract,
}

/// A data contract file: keys in camelCase or snake_case, optionally wrapped as
/// `{"dataContract": {...}}`.
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "DataContractFile")]
enum MaybeWrapped {
    Wrapped(Box<Wrapped>),
    Plain(Box<RawContract>),
}

// Fields typed `IgnoredAny` are accepted and ignored, hence never read.
#[allow(dead_code)]
/// A data contract: the data's shape and its privacy implications.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DataContract", transform = crate::schema::with_snake_case_aliases)]
struct RawContract {
    /// The contract's reference `{handle, name, version}`.
    #[serde(rename = "ref")]
    contract_ref: ContractRef,
    /// The field that ties records into a sequence (one key per value and time window).
    #[serde(rename = "keyField", alias = "key_field")]
    key_field: String,
    /// The field naming the person (for `keylink subjects`), if any.
    #[serde(default, rename = "dataSubjectField", alias = "data_subject_field")]
    data_subject_field: Option<String>,
    /// Legacy: PII field → purpose level (`fieldMetadata` wins where both name a field).
    #[serde(default, rename = "piiFields", alias = "pii_fields")]
    pii_fields: BTreeMap<String, i32>,
    /// Per-field settings: which fields are PII and their purpose levels.
    #[serde(default, rename = "fieldMetadata", alias = "field_metadata")]
    field_metadata: Vec<RawFieldMetadata>,
    /// Validations of the records (type `regex`).
    #[serde(default)]
    validations: Vec<RawValidation>,
    /// The records' schema: a simple schema (`nodes`) or a JSON Schema (`properties`).
    #[serde(default)]
    schema: Option<serde_json::Value>,
    // accepted and ignored: what the original system adds
    /// Ignored (the original system's id).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    id: Option<IgnoredAny>,
    /// Ignored (the original system's state).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    state: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default, rename = "isPublic", alias = "is_public")]
    #[schemars(with = "serde_json::Value")]
    is_public: Option<IgnoredAny>,
    /// Ignored (the original system's metadata).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    metadata: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default, rename = "projectId", alias = "project_id")]
    #[schemars(with = "serde_json::Value")]
    project_id: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    checksum: Option<IgnoredAny>,
}

#[allow(dead_code)]
/// A field's settings.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FieldMetadata", transform = crate::schema::with_snake_case_aliases)]
struct RawFieldMetadata {
    /// The field name or `/` path.
    #[serde(rename = "fieldName", alias = "field_name")]
    field_name: String,
    /// Whether it is personal data, and its purpose level.
    #[serde(default, rename = "personalDataConfig", alias = "personal_data_config")]
    personal_data_config: Option<RawPersonalDataConfig>,
    /// Ignored.
    #[serde(
        default,
        rename = "statisticalDataType",
        alias = "statistical_data_type"
    )]
    #[schemars(with = "serde_json::Value")]
    statistical_data_type: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default, rename = "ordinalValues", alias = "ordinal_values")]
    #[schemars(with = "serde_json::Value")]
    ordinal_values: Option<IgnoredAny>,
    /// Ignored.
    #[serde(default, rename = "nullHandlingConfig", alias = "null_handling_config")]
    #[schemars(with = "serde_json::Value")]
    null_handling_config: Option<IgnoredAny>,
}

#[allow(dead_code)]
/// Whether a field is personal data.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PersonalDataConfig", transform = crate::schema::with_snake_case_aliases)]
struct RawPersonalDataConfig {
    /// Whether the field is PII (encrypted).
    #[serde(default, rename = "isPii", alias = "is_pii")]
    is_pii: bool,
    /// Ignored.
    #[serde(default, rename = "isQuasiId", alias = "is_quasi_id")]
    #[schemars(with = "serde_json::Value")]
    is_quasi_id: Option<IgnoredAny>,
    /// The purpose (consent level) that allows decrypting it; required for a PII field.
    #[serde(default, rename = "purposeLevel", alias = "purpose_level")]
    purpose_level: Option<i32>,
}

/// A validation of a field.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Validation")]
struct RawValidation {
    /// The field name or `/` path.
    field: String,
    /// The kind: `regex`.
    #[serde(rename = "type")]
    kind: String,
    /// The regex (unanchored unless it anchors).
    value: String,
}

/// The schema of a contract file (for [`crate::schema::contract`]).
pub(crate) struct ContractDocument;

impl JsonSchema for ContractDocument {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        MaybeWrapped::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        MaybeWrapped::json_schema(generator)
    }
}

/// Parses a document (JSON or YAML, chosen by the file extension; unknown extensions try JSON
/// first) into `T`, with errors naming the file and the path of the bad setting.
pub fn parse_document<T: serde::de::DeserializeOwned>(bytes: &[u8], file: &Path) -> Result<T> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    let yaml = match ext.as_deref() {
        Some("yaml") | Some("yml") => true,
        Some("json") => false,
        _ => !bytes.trim_ascii_start().starts_with(b"{"),
    };
    let shown = file.display();
    let (path, message, position) = if yaml {
        let de = serde_norway::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize(de) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let position = inner.location().map(|l| (l.line(), l.column()));
                (path, inner.to_string(), position)
            }
        }
    } else {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize(&mut de) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let position = (inner.line() > 0).then(|| (inner.line(), inner.column()));
                (path, inner.to_string(), position)
            }
        }
    };
    Err(Error::config(compose_error(
        &shown.to_string(),
        &path,
        &message,
        position,
    )))
}

/// `file: path (line L, column C): message`, naming the file, the path and the position once.
///
/// The deserializers' messages carry their own copies of both: serde_norway writes `path: ` before
/// and ` at line L column C` after its message, and a value deserialized through typetag (a
/// connector, a format) nests a whole inner message in the outer one
/// (`a.b: a.b: unknown field … at line 2 column 25 at line 2 column 10`). Those copies are
/// stripped; the innermost position is the most precise one (the bad key itself) and wins.
fn compose_error(
    file: &str,
    path: &str,
    message: &str,
    position: Option<(usize, usize)>,
) -> String {
    let mut msg = message.trim();
    let mut innermost = position;
    // trailing ` at line L column C` (outermost last)
    while let Some((rest, pos)) = strip_position(msg) {
        innermost = Some(pos);
        msg = rest;
    }
    // leading `p: ` where p is the setting's path or one of its parents
    while let Some((head, rest)) = msg.split_once(": ") {
        let is_path = !head.is_empty()
            && !head.contains(char::is_whitespace)
            && (path.starts_with(head) || head == ".");
        if !is_path {
            break;
        }
        msg = rest;
    }
    let at = innermost
        .map(|(l, c)| format!(" (line {l}, column {c})"))
        .unwrap_or_default();
    format!("{file}: {}{at}: {msg}", display_path(path))
}

/// Splits `text … at line L column C` into the text and (L, C).
fn strip_position(msg: &str) -> Option<(&str, (usize, usize))> {
    let i = msg.rfind(" at line ")?;
    let (line, column) = msg[i + " at line ".len()..].split_once(" column ")?;
    let line = line.parse().ok()?;
    let column = column.parse().ok()?;
    Some((&msg[..i], (line, column)))
}

fn display_path(p: &str) -> String {
    if p == "." || p.is_empty() {
        "(top level)".to_string()
    } else {
        p.to_string()
    }
}

impl DataContract {
    /// Reads and checks a contract file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::from(e).context(format!("cannot read contract {}", path.display()))
        })?;
        Self::from_slice(&bytes, path)
    }

    /// Parses and checks a contract; `file` names it in errors.
    pub fn from_slice(bytes: &[u8], file: &Path) -> Result<Self> {
        let raw = match parse_document::<MaybeWrapped>(bytes, file) {
            Ok(MaybeWrapped::Wrapped(w)) => w.data_contract,
            Ok(MaybeWrapped::Plain(c)) => *c,
            // untagged enums hide the real error: parse again as a plain contract to report it
            Err(_) => parse_document::<RawContract>(bytes, file)?,
        };
        Self::from_raw(raw, file)
    }

    fn from_raw(raw: RawContract, file: &Path) -> Result<Self> {
        let shown = file.display();
        if raw.key_field.trim().is_empty() {
            return Err(Error::config(format!(
                "{shown}: keyField: must name a field, found an empty string"
            )));
        }
        let mut pii: BTreeMap<String, i32> = raw.pii_fields;
        for (i, fm) in raw.field_metadata.iter().enumerate() {
            if let Some(pdc) = &fm.personal_data_config {
                if pdc.is_pii {
                    let level = pdc.purpose_level.ok_or_else(|| {
                        Error::config(format!(
                            "{shown}: fieldMetadata[{i}].personalDataConfig.purposeLevel: \
                             required for PII field {:?}",
                            fm.field_name
                        ))
                    })?;
                    pii.insert(fm.field_name.clone(), level);
                } else {
                    // fieldMetadata wins: an explicit isPii=false removes a legacy entry
                    pii.remove(&fm.field_name);
                }
            }
        }
        for (field, level) in &pii {
            if *level < 0 {
                return Err(Error::config(format!(
                    "{shown}: purpose level of PII field {field:?} must be >= 0, found {level}"
                )));
            }
        }
        let mut validations = Vec::with_capacity(raw.validations.len());
        for (i, v) in raw.validations.into_iter().enumerate() {
            if !v.kind.eq_ignore_ascii_case("regex") {
                return Err(Error::not_supported(format!(
                    "{shown}: validations[{i}].type: validation type {:?} is not supported; \
                     expected \"regex\"",
                    v.kind
                )));
            }
            let regex = Regex::new(&v.value).map_err(|e| {
                Error::config(format!(
                    "{shown}: validations[{i}].value: invalid regex for field {:?}: {e}",
                    v.field
                ))
            })?;
            validations.push(Validation {
                field: v.field,
                regex,
            });
        }
        let schema_fields = raw.schema.as_ref().and_then(schema_field_names);
        Ok(DataContract {
            contract_ref: raw.contract_ref,
            key_field: raw.key_field,
            data_subject_field: raw.data_subject_field.filter(|s| !s.is_empty()),
            pii_fields: pii
                .into_iter()
                .map(|(field, purpose_level)| PiiField {
                    field,
                    purpose_level,
                })
                .collect(),
            validations,
            schema_fields,
        })
    }

    /// The purpose level of `field` if it is PII.
    pub fn purpose_of(&self, field: &str) -> Option<i32> {
        self.pii_fields
            .iter()
            .find(|p| p.field == field)
            .map(|p| p.purpose_level)
    }
}

/// Field names from a simple schema (`nodes`, possibly under `simpleSchema`) or a JSON Schema
/// (`properties`), nested names joined with `/`.
fn schema_field_names(schema: &serde_json::Value) -> Option<Vec<String>> {
    fn nodes(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(arr) = v.as_array() {
            for n in arr {
                let Some(name) = n.get("name").and_then(|x| x.as_str()) else {
                    continue;
                };
                let full = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                match n.get("nodes") {
                    Some(children) if children.as_array().is_some_and(|a| !a.is_empty()) => {
                        nodes(children, &full, out)
                    }
                    _ => out.push(full),
                }
            }
        }
    }
    fn props(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(map) = v.as_object() {
            for (name, sub) in map {
                let full = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                match sub.get("properties") {
                    Some(p) => props(p, &full, out),
                    None => out.push(full),
                }
            }
        }
    }
    let mut out = Vec::new();
    let simple = schema
        .get("simpleSchema")
        .or_else(|| schema.get("simple_schema"))
        .unwrap_or(schema);
    if let Some(n) = simple.get("nodes") {
        nodes(n, "", &mut out);
    } else if let Some(p) = schema.get("properties") {
        props(p, "", &mut out);
    } else {
        return None;
    }
    Some(out)
}

/// Finds the contract with reference `wanted` among the `.json`, `.yaml` and `.yml` files of
/// `dir` (recursively). Two files with the same reference are an error.
pub fn find_contract(dir: &Path, wanted: &ContractRef) -> Result<(PathBuf, DataContract)> {
    let mut files = Vec::new();
    collect_contract_files(dir, &mut files).map_err(|e| {
        Error::from(e).context(format!(
            "cannot read the contracts directory {}",
            dir.display()
        ))
    })?;
    files.sort();
    let mut found: Option<(PathBuf, DataContract)> = None;
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        // Only files that look like contracts count; a broken one with the wanted ref is reported.
        let Some(r) = peek_ref(&bytes, &f) else {
            continue;
        };
        if &r != wanted {
            continue;
        }
        let c = DataContract::from_slice(&bytes, &f)?;
        if let Some((prev, _)) = &found {
            return Err(Error::config(format!(
                "contract {wanted} is defined twice: {} and {}",
                prev.display(),
                f.display()
            )));
        }
        found = Some((f, c));
    }
    found.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "contract {wanted} not found in {} (looked for .json/.yaml files whose \"ref\" is \
                 {{handle: {:?}, name: {:?}, version: {:?}}})",
                dir.display(),
                wanted.handle,
                wanted.name,
                wanted.version
            ),
        )
    })
}

fn collect_contract_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            collect_contract_files(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("json" | "yaml" | "yml")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

fn peek_ref(bytes: &[u8], file: &Path) -> Option<ContractRef> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "ref")]
        r: Option<ContractRef>,
        #[serde(rename = "dataContract", alias = "data_contract")]
        dc: Option<Box<Peek>>,
    }
    let p: Peek = parse_document(bytes, file).ok()?;
    p.r.or_else(|| p.dc.and_then(|d| d.r))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
      "ref": { "handle": "acme", "name": "clickstream", "version": "1.0.0" },
      "keyField": "SessionId",
      "dataSubjectField": "UserId",
      "piiFields": { "Email": 1, "UserName": 2, "SessionId": 1, "Age": 3 },
      "fieldMetadata": [
        { "fieldName": "customer/id",
          "personalDataConfig": { "isPii": true, "isQuasiId": false, "purposeLevel": 1 } },
        { "fieldName": "UserName",
          "personalDataConfig": { "isPii": true, "purposeLevel": 5 } },
        { "fieldName": "Age", "personalDataConfig": { "isPii": false, "isQuasiId": true },
          "statisticalDataType": "NUMERICAL" },
        { "fieldName": "size", "personalDataConfig": { "isPii": false, "isQuasiId": true },
          "statisticalDataType": "ORDINAL", "ordinalValues": ["XS","S","M","L","XL"] }
      ],
      "validations": [ { "field": "Email", "type": "regex", "value": "^[^@]+@[^@]+$" } ],
      "schema": { "nodes": [ { "name": "Email", "type": "STRING" },
                             { "name": "customer", "type": "NODE",
                               "nodes": [ { "name": "id", "type": "STRING" } ] } ] }
    }"#;

    fn parse(s: &str, name: &str) -> Result<DataContract> {
        DataContract::from_slice(s.as_bytes(), Path::new(name))
    }

    #[test]
    fn parses_the_spec_example() {
        let c = parse(JSON, "c.json").unwrap();
        assert_eq!(c.contract_ref.to_string(), "acme/clickstream/1.0.0");
        assert_eq!(c.key_field, "SessionId");
        assert_eq!(c.data_subject_field.as_deref(), Some("UserId"));
        // fieldMetadata wins: UserName level 5, Age not PII any more, customer/id added
        assert_eq!(c.purpose_of("UserName"), Some(5));
        assert_eq!(c.purpose_of("Age"), None);
        assert_eq!(c.purpose_of("customer/id"), Some(1));
        assert_eq!(c.purpose_of("Email"), Some(1));
        assert_eq!(c.pii_fields.len(), 4);
        assert!(c.validations[0].regex.is_match(b"a@b"));
        assert!(!c.validations[0].regex.is_match(b"ab"));
        assert_eq!(
            c.schema_fields.as_deref(),
            Some(&["Email".to_string(), "customer/id".to_string()][..])
        );
    }

    #[test]
    fn snake_case_yaml_and_wrapped() {
        let yaml =
            "ref: {handle: a, name: b, version: 1.0.0}\nkey_field: sid\npii_fields: {email: 2}\n";
        let c = parse(yaml, "c.yaml").unwrap();
        assert_eq!(c.key_field, "sid");
        assert_eq!(c.purpose_of("email"), Some(2));
        let wrapped = format!(r#"{{"dataContract": {JSON}}}"#);
        assert_eq!(parse(&wrapped, "w.json").unwrap().key_field, "SessionId");
    }

    #[test]
    fn errors_name_file_and_path() {
        let bad = JSON.replace("\"keyField\"", "\"keyFeld\"");
        let e = parse(&bad, "contracts/c.json").unwrap_err().to_string();
        assert!(e.contains("contracts/c.json"), "{e}");
        assert!(e.contains("keyFeld"), "{e}");

        let bad = JSON.replace("^[^@]+@[^@]+$", "([");
        let e = parse(&bad, "c.json").unwrap_err().to_string();
        assert!(e.contains("validations[0].value"), "{e}");

        let bad = JSON.replace("\"regex\"", "\"range\"");
        let e = parse(&bad, "c.json").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSupported);

        let bad = JSON.replace("\"purposeLevel\": 1 }", "\"purposeLevel\": -1 }");
        assert!(parse(&bad, "c.json").is_err());

        let bad = r#"{"ref":{"handle":"a","name":"b","version":"1"},"keyField":"x","pii_fields":{"e":"one"}}"#;
        let e = parse(bad, "c.json").unwrap_err().to_string();
        assert!(e.contains("pii_fields.e"), "{e}");
    }

    #[test]
    fn errors_name_path_and_position_once() {
        // what serde_norway says of a typetag value, nested in the outer message
        let e = compose_error(
            "keylink.yaml",
            "connectors.fs.rot",
            "connectors.fs: connectors.fs: unknown field `rot`, expected `root` at line 2 \
             column 22 at line 2 column 7",
            Some((2, 7)),
        );
        assert_eq!(
            e,
            "keylink.yaml: connectors.fs.rot (line 2, column 22): unknown field `rot`, expected \
             `root`"
        );
        let e = compose_error(
            "j.json",
            ".",
            "expected value at line 1 column 1",
            Some((1, 1)),
        );
        assert_eq!(e, "j.json: (top level) (line 1, column 1): expected value");
        // a message that only looks like a path prefix stays whole
        let e = compose_error("c.yaml", "a.b", "invalid type: string \"x\"", None);
        assert_eq!(e, "c.yaml: a.b: invalid type: string \"x\"");

        let bad = JSON.replace("\"keyField\"", "\"keyFeld\"");
        let e = parse(&bad, "c.json").unwrap_err().to_string();
        assert!(
            e.starts_with("c.json: keyFeld (line 3, column 15): unknown field"),
            "{e}"
        );
        assert_eq!(e.matches("line ").count(), 1, "{e}");
        let yaml =
            "ref: {handle: a, name: b, version: 1}\nkey_field: sid\npii_fields: {email: x}\n";
        let e = parse(yaml, "c.yaml").unwrap_err().to_string();
        assert_eq!(e.matches("pii_fields.email").count(), 1, "{e}");
        assert_eq!(e.matches("line ").count(), 1, "{e}");
    }

    #[test]
    fn finds_contracts_by_ref() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("acme")).unwrap();
        std::fs::write(dir.path().join("acme/click.json"), JSON).unwrap();
        std::fs::write(dir.path().join("notes.yaml"), "just: notes\n").unwrap();
        let r = ContractRef::parse("acme/clickstream/1.0.0").unwrap();
        let (p, c) = find_contract(dir.path(), &r).unwrap();
        assert!(p.ends_with("acme/click.json"));
        assert_eq!(c.key_field, "SessionId");
        let missing = ContractRef::parse("acme/clickstream/2.0.0").unwrap();
        assert_eq!(
            find_contract(dir.path(), &missing).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        std::fs::write(dir.path().join("dup.json"), JSON).unwrap();
        assert!(
            find_contract(dir.path(), &r)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
