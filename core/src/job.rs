//! The batch-job file and keylink's own config file.
//!
//! A [`BatchJob`] is the original system's batch-job JSON, unchanged: `source_data`, `consent`,
//! `encryption`, `event_contract_ref` (or `data_contract_ref`), `encrypted_data`,
//! `encryption_keys_data`, `derived_data`, `policy_id`. keylink adds `rejected_data` (where raw
//! rejected records go; nowhere unless set).
//!
//! A [`Config`] (`keylink.yaml`) names the connectors the job's `data_connector_ref.name`s refer
//! to, the contracts directory, the key store and retention policies.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::connector::ConnectorConfig;
use crate::contract::{ContractRef, parse_document};
use crate::error::{Error, Result};
use crate::format::FormatConfig;
use crate::keystore::KeyStoreConfig;

/// A batch job, as in the original system's `BatchJob` JSON schema.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = crate::schema::job_checks)]
pub struct BatchJob {
    /// Ignored: the original system's job reference.
    #[serde(default, rename = "ref")]
    #[schemars(with = "serde_json::Value")]
    pub job_ref: Option<IgnoredAny>,
    /// Ignored: the original system's job states.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub states: Option<IgnoredAny>,
    /// Where the input records are.
    #[schemars(transform = |s: &mut schemars::Schema| crate::schema::require(s, &["data_type"]))]
    pub source_data: DataConnectorAndType,
    /// How each record's consent levels are found.
    #[serde(default)]
    pub consent: ConsentConfig,
    /// Timestamp and key-group settings.
    pub encryption: EncryptionConfig,
    /// The data contract (the original system's name).
    #[serde(default)]
    pub event_contract_ref: Option<ContractRef>,
    /// The data contract (newer name); give one of the two.
    #[serde(default)]
    pub data_contract_ref: Option<ContractRef>,
    /// Where the encrypted dataset goes.
    #[serde(default)]
    pub encrypted_data: Option<Target>,
    /// Where the keys export goes.
    #[serde(default)]
    pub encryption_keys_data: Option<Target>,
    /// Purpose-bound derived datasets.
    #[serde(default)]
    pub derived_data: Vec<DerivedData>,
    /// The retention policy of the keys (see [`Config::policies`]); written to the keys export.
    #[serde(default)]
    pub policy_id: Option<String>,
    /// keylink extension: where raw rejected records go. Without it they go nowhere (only their
    /// line numbers and reasons are reported).
    #[serde(default)]
    pub rejected_data: Option<Target>,
}

/// A reference to a named connector plus a location and a format.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConnectorAndType {
    /// Which connector.
    pub data_connector_ref: DataConnectorRef,
    /// Folder/prefix in the store; the root when omitted.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// For a source: a glob selecting objects under the prefix (all when omitted). For a target:
    /// the object name.
    #[serde(default)]
    pub file_name: Option<String>,
    /// The format, externally tagged: `{ "csv": { "charset": "UTF-8" } }`.
    #[serde(default)]
    pub data_type: Option<Box<dyn FormatConfig>>,
    /// keylink extension, targets only: the topic of a message connector (`kafka`) to write the
    /// output's records to, one JSON Lines record per message, instead of an object (then
    /// `path_prefix` and `file_name` must be absent). All topic targets of a job are written in
    /// one transaction per connector, committed after every object output (SPEC §11).
    #[serde(default)]
    pub topic: Option<String>,
}

/// A named connector reference.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConnectorRef {
    /// The connector's name in the config file.
    pub name: String,
    /// Ignored (the original system's billing id).
    #[serde(default)]
    pub billing_id: Option<String>,
    /// Ignored (the original system's project id).
    #[serde(default)]
    pub project_id: Option<String>,
}

/// An output target.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Where it goes.
    #[schemars(transform = crate::schema::target_needs_file_name)]
    pub target: DataConnectorAndType,
}

/// Consent settings.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Levels of a record whose own consent cannot be determined.
    #[serde(default)]
    pub default_consent_levels: Vec<i32>,
    /// Where a record's consent levels come from.
    #[serde(default)]
    pub consent_level_extractor: Option<ConsentLevelExtractor>,
}

/// Reads consent levels from a field.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentLevelExtractor {
    /// The field holding the consent value.
    pub field: String,
    /// Value → levels. Without it the value itself is parsed as `2` or `[1,2]`.
    #[serde(default)]
    pub field_patterns: Option<BTreeMap<String, ConsentLevels>>,
}

/// A list of consent levels.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentLevels {
    /// The levels.
    pub consent_levels: Vec<i32>,
}

/// Timestamp and key-group settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// How each record's time is found.
    pub timestamp_config: TimestampConfig,
    /// Key group shared across runs; a fresh group per run when omitted.
    #[serde(default)]
    pub batch_job_group_id: Option<String>,
    /// keylink extension: the key window in hours (default 24), aligned to the Unix epoch.
    #[serde(default)]
    pub window_hours: Option<u32>,
}

/// How to read a record's timestamp.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimestampConfig {
    /// The field holding the timestamp.
    pub field: String,
    /// A Java `DateTimeFormatter` pattern, or `epoch_millis`, `epoch_seconds`, `iso8601`.
    pub format: String,
    /// Zone used when the value has none.
    #[serde(default)]
    pub default_time_zone: Option<TimeZone>,
}

/// An IANA time zone.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeZone {
    /// IANA id, such as `Europe/Amsterdam`.
    pub id: String,
    /// Ignored: the tz database version.
    #[serde(default)]
    pub version: Option<String>,
}

/// A purpose-bound derived dataset.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DerivedData {
    /// Where it goes.
    #[schemars(transform = crate::schema::target_needs_file_name)]
    pub target: DataConnectorAndType,
    /// The purposes (consent levels) it is for.
    #[serde(default)]
    pub consent_levels: Vec<i32>,
    /// How record consent is compared with the purposes.
    #[serde(default)]
    pub consent_level_type: ConsentLevelType,
    /// Fields replaced by a keyed hash.
    #[serde(default)]
    pub masked_fields: Option<MaskedFields>,
}

/// How a record's consent levels are compared with a derived dataset's purposes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConsentLevelType {
    /// Every requested level must be among the record's levels (the default).
    #[default]
    Granular,
    /// Consent for level n implies every level ≤ n.
    Cumulative,
}

/// What [`ConsentLevelType`]'s `Deserialize` accepts: the original system's names or numbers.
impl JsonSchema for ConsentLevelType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConsentLevelType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How a record's consent levels are compared with the purposes: \
                `GRANULAR` (the default; every requested level must be among the record's) or \
                `CUMULATIVE` (consent for level n implies every level up to n); or the \
                original system's numbers 2 and 1 (0: unspecified, granular).",
            "oneOf": [
                { "enum": ["GRANULAR", "CUMULATIVE", "CONSENT_LEVEL_TYPE_UNSPECIFIED"] },
                { "enum": [0, 1, 2] },
            ],
        })
    }
}

impl<'de> Deserialize<'de> for ConsentLevelType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => match s.as_str() {
                "GRANULAR" | "CONSENT_LEVEL_TYPE_UNSPECIFIED" => Ok(Self::Granular),
                "CUMULATIVE" => Ok(Self::Cumulative),
                other => Err(serde::de::Error::custom(format!(
                    "unknown consent_level_type {other:?}; expected \"GRANULAR\" or \"CUMULATIVE\""
                ))),
            },
            Raw::I(0 | 2) => Ok(Self::Granular),
            Raw::I(1) => Ok(Self::Cumulative),
            Raw::I(other) => Err(serde::de::Error::custom(format!(
                "unknown consent_level_type {other}; expected 1 (CUMULATIVE) or 2 (GRANULAR)"
            ))),
        }
    }
}

/// Masking settings of a derived dataset.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskedFields {
    /// The hash: `HMAC_SHA256` (the default).
    #[serde(default)]
    pub hash_type: Option<String>,
    /// The HMAC key. Required: a missing seed never becomes a default.
    #[serde(default)]
    pub seed: Option<crate::Sensitive<String>>,
    /// Contract ref → field patterns (exact names or `*` globs).
    #[serde(default)]
    pub field_patterns: BTreeMap<String, PatternList>,
}

impl fmt::Debug for MaskedFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskedFields")
            .field("hash_type", &self.hash_type)
            .field("seed", &self.seed)
            .field("field_patterns", &self.field_patterns)
            .finish()
    }
}

/// A list of field patterns.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternList {
    /// Exact names or `*` globs.
    pub field_patterns: Vec<String>,
}

impl BatchJob {
    /// Reads a job file (JSON or YAML).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::from(e).context(format!("cannot read job {}", path.display())))?;
        Self::from_slice(&bytes, path)
    }

    /// Parses a job; `file` names it in errors.
    pub fn from_slice(bytes: &[u8], file: &Path) -> Result<Self> {
        let job: BatchJob = parse_document(bytes, file)?;
        job.check(file)?;
        Ok(job)
    }

    /// The contract reference (`event_contract_ref` or `data_contract_ref`).
    pub fn contract_ref(&self) -> &ContractRef {
        self.data_contract_ref
            .as_ref()
            .or(self.event_contract_ref.as_ref())
            .expect("checked in from_slice")
    }

    fn check(&self, file: &Path) -> Result<()> {
        let shown = file.display();
        match (&self.event_contract_ref, &self.data_contract_ref) {
            (None, None) => {
                return Err(Error::config(format!(
                    "{shown}: event_contract_ref: missing; a job names its data contract with \
                     event_contract_ref (or data_contract_ref): {{\"handle\", \"name\", \"version\"}}"
                )));
            }
            (Some(a), Some(b)) if a != b => {
                return Err(Error::config(format!(
                    "{shown}: event_contract_ref ({a}) and data_contract_ref ({b}) differ; give one"
                )));
            }
            _ => {}
        }
        if self.source_data.data_type.is_none() {
            return Err(Error::config(format!(
                "{shown}: source_data.data_type: missing; expected for example {{\"csv\": {{}}}} \
                 or {{\"jsonl\": {{}}}}"
            )));
        }
        if self.encryption.timestamp_config.field.is_empty() {
            return Err(Error::config(format!(
                "{shown}: encryption.timestamp_config.field: must name a field"
            )));
        }
        if self.encrypted_data.is_none() && self.derived_data.is_empty() {
            return Err(Error::config(format!(
                "{shown}: encrypted_data: missing; a job needs an encrypted_data target (or \
                 derived_data)"
            )));
        }
        let targets = self
            .encrypted_data
            .iter()
            .map(|t| ("encrypted_data.target", &t.target))
            .chain(
                self.encryption_keys_data
                    .iter()
                    .map(|t| ("encryption_keys_data.target", &t.target)),
            )
            .chain(
                self.rejected_data
                    .iter()
                    .map(|t| ("rejected_data.target", &t.target)),
            );
        if self.source_data.topic.is_some() {
            return Err(Error::not_supported(format!(
                "{shown}: source_data.topic: a batch job reads objects; reading a topic is what \
                 `keylink stream` does"
            )));
        }
        let derived: Vec<(String, &DataConnectorAndType)> = self
            .derived_data
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("derived_data[{i}].target"), &d.target))
            .collect();
        let targets = targets.map(|(n, t)| (n.to_string(), t)).chain(derived);
        let mut topics: Vec<(String, &str, &str)> = Vec::new();
        for (name, t) in targets {
            match t.topic.as_deref() {
                Some(topic) => {
                    if name.starts_with("encryption_keys_data") {
                        return Err(Error::config(format!(
                            "{shown}: {name}.topic: the keys export is always a CSV object; \
                             give it a path_prefix and file_name on an object connector"
                        )));
                    }
                    if topic.trim().is_empty() || topic != topic.trim() {
                        return Err(Error::config(format!(
                            "{shown}: {name}.topic: must name a topic (no blanks around it)"
                        )));
                    }
                    for (setting, set) in [
                        ("path_prefix", t.path_prefix.is_some()),
                        ("file_name", t.file_name.is_some()),
                    ] {
                        if set {
                            return Err(Error::config(format!(
                                "{shown}: {name}.{setting}: a target with a topic writes \
                                 messages, not an object; give either a topic or \
                                 path_prefix/file_name"
                            )));
                        }
                    }
                    let connector = t.data_connector_ref.name.as_str();
                    if let Some((other, _, _)) = topics
                        .iter()
                        .find(|(_, c, t)| *c == connector && *t == topic)
                    {
                        return Err(Error::config(format!(
                            "{shown}: {name}.topic: {other} writes to topic {topic:?} too; every \
                             output needs a topic of its own"
                        )));
                    }
                    topics.push((name, connector, topic));
                }
                None if t.file_name.as_deref().is_none_or(str::is_empty) => {
                    return Err(Error::config(format!(
                        "{shown}: {name}.file_name: missing; a target names the object to write \
                         (or, on a kafka connector, the topic)"
                    )));
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// keylink's config file (`keylink.yaml`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Named connectors: `local-demo: { type: local, root: ./data }`.
    #[serde(default)]
    pub connectors: BTreeMap<String, Box<dyn ConnectorConfig>>,
    /// The directory searched for contracts by reference (default `./contracts`).
    #[serde(default)]
    pub contracts: Option<PathBuf>,
    /// The key store. Core has no default: a program fills it in when the file names none (the
    /// `keylink` CLI uses the embedded store, `./keylink-keys.db`).
    #[serde(default)]
    pub key_store: Option<Box<dyn KeyStoreConfig>>,
    /// Retention policies by `policy_id`.
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    /// The folder relative paths are resolved against (the config file's folder). Not read from
    /// the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Resolves `p` against `base` (the config file's folder), dropping `./` components so messages
/// show `demo/keys.db`, not `demo/./keys.db`. Absolute paths are returned as they are.
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let joined: PathBuf = base
        .join(p)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if joined.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #12: an unknown policy is a config error, not a silent 7-year default.
    #[test]
    fn unknown_policy_ids_are_config_errors() {
        let mut c = Config::empty(PathBuf::from("."));
        assert_eq!(c.retention_days(None).unwrap(), DEFAULT_RETENTION_DAYS);
        assert_eq!(c.retention_days(Some("")).unwrap(), DEFAULT_RETENTION_DAYS);
        let e = c.retention_days(Some("gdpr-30d")).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Config);
        assert!(e.to_string().contains("gdpr-30d"), "{e}");
        c.policies
            .insert("short".into(), Policy { retention_days: 30 });
        assert_eq!(c.retention_days(Some("short")).unwrap(), 30);
        assert!(c.retention_days(Some("gdpr-30d")).is_err());
    }

    #[test]
    fn resolve_path_drops_dot_components_but_never_empties() {
        let r = |b: &str, p: &str| resolve_path(Path::new(b), Path::new(p));
        assert_eq!(r(".", "."), PathBuf::from("."));
        assert_eq!(r(".", "./keys.db"), PathBuf::from("keys.db"));
        assert_eq!(r("demo", "./keys.db"), PathBuf::from("demo/keys.db"));
        assert_eq!(r("demo", "."), PathBuf::from("demo"));
        assert_eq!(r("demo", "../x"), PathBuf::from("demo/../x"));
        assert_eq!(r("demo", "/abs/x"), PathBuf::from("/abs/x"));
    }
}

/// A retention policy.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Days a key is kept after its window starts (default 2557, about 7 years).
    pub retention_days: u32,
}

/// Default key retention: 2557 days (about 7 years).
pub const DEFAULT_RETENTION_DAYS: u32 = 2557;

impl Config {
    /// An empty config whose relative paths resolve against `base_dir`.
    pub fn empty(base_dir: PathBuf) -> Self {
        Config {
            connectors: BTreeMap::new(),
            contracts: None,
            key_store: None,
            policies: BTreeMap::new(),
            base_dir,
        }
    }

    /// Reads a config file; relative paths in it resolve against its folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::from(e).context(format!("cannot read config {}", path.display()))
        })?;
        let mut c: Config = parse_document(&bytes, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        c.base_dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        };
        for (name, conn) in &c.connectors {
            conn.validate()
                .map_err(|e| e.context(format!("{}: connectors.{name}", path.display())))?;
        }
        if let Some(ks) = &c.key_store {
            ks.validate()
                .map_err(|e| e.context(format!("{}: key_store", path.display())))?;
        }
        Ok(c)
    }

    /// The contracts directory, resolved.
    pub fn contracts_dir(&self) -> PathBuf {
        self.resolve(self.contracts.as_deref().unwrap_or(Path::new("contracts")))
    }

    /// Resolves a path against the config's folder (`./` components dropped, so messages show
    /// `demo/keys.db`, not `demo/./keys.db`).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve_path(&self.base_dir, p)
    }

    /// The retention of `policy_id` in days: the default without a policy id; an error for an id
    /// the config's `policies` do not define (even when it defines none): a misspelt policy
    /// silently kept for 7 years is a retention breach (`keylink keys purge --expired` purges by
    /// the expiry recorded with each key).
    pub fn retention_days(&self, policy_id: Option<&str>) -> Result<u32> {
        match policy_id.filter(|p| !p.is_empty()) {
            None => Ok(DEFAULT_RETENTION_DAYS),
            Some(id) => match self.policies.get(id) {
                Some(p) => Ok(p.retention_days),
                None if self.policies.is_empty() => Err(Error::config(format!(
                    "policy_id {id:?} is not defined: the config has no `policies` (add \
                     `policies: {{ {id}: {{ retention_days: N }} }}`)"
                ))),
                None => Err(Error::config(format!(
                    "policy_id {id:?} is not among the config's policies ({})",
                    self.policies.keys().cloned().collect::<Vec<_>>().join(", ")
                ))),
            },
        }
    }
}
