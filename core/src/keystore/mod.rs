//! The key store: where data keys live, one per key scope.
//!
//! A *key scope* is (key group, keyField value, time window). The engine asks the store for the
//! keys of many scopes at once ([`KeyStore::get_or_create`]); the store returns the existing key of
//! each scope or creates one, atomically, and makes new keys **durable before it returns** — the
//! engine writes ciphertext only after that, so no ciphertext can outlive the loss of its key by
//! accident.
//!
//! # Privacy lives in the types
//!
//! A store never sees a plaintext keyField value or data-subject id. Every store holds a secret
//! and hands the engine a [`LookupKey`] made from it once ([`KeyStore::lookup_key`]); the engine
//! hashes `(group, keyField value)` into a [`ScopeHash`] and subject ids into a [`SubjectHash`]
//! (HMAC-SHA256, length-prefixed and domain-separated) *before* calling the store, and the trait
//! only takes those hashes. A store can therefore not leak what it never receives.
//!
//! # Key lifecycle (SPEC §9)
//!
//! Beyond resolving keys, a store serves the `keylink subjects …` and `keylink keys …` commands:
//! a subject's keys ([`KeyStore::subject_keys`]), subjects with counts, stats per group, window
//! and policy, exports of a group, counting and purging expired keys, forgetting a subject with
//! a receipt ([`KeyStore::forget`]) that tombstones the forgotten scopes (a later request gets a
//! new key flagged [`ResolvedKey::after_forget`]), an audit log of operations with counts, times
//! and subject hashes (never values), and a crash-safe master key rotation
//! ([`KeyStore::rotate_master`]). Each key is created with its [`KeyLabels`] (group and policy);
//! stores keep the group hashed ([`GroupHash`]) with its name sealed under the master key. These
//! methods default to an [`ErrorKind::NotSupported`](crate::error::ErrorKind::NotSupported)
//! error, so a third-party store that lacks one says so instead of pretending there is nothing.
//!
//! Key stores are plug-in crates, like connectors: `keylink-keystore-embedded` (one SQLite file,
//! the CLI's default) and `keylink-keystore-postgres`. A store registers its configuration under
//! its `type` tag with `#[typetag::serde(name = "…")]`; core never names a store. The conformance
//! suite every store should pass is `keylink_core::testkit::keystore` (feature `testkit`).

pub mod envelope;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::connector::BuildContext;
use crate::crypto::KeyMaterial;
use crate::error::{Error, Result};

/// Length in bytes of a [`ScopeHash`] or a [`SubjectHash`] (HMAC-SHA256).
pub const LOOKUP_HASH_LEN: usize = 32;

/// Domain tag of scope hashes.
const SCOPE_TAG: u8 = 1;
/// Domain tag of subject hashes.
const SUBJECT_TAG: u8 = 2;
/// Domain tag of key-group hashes.
const GROUP_TAG: u8 = 3;

type HmacSha256 = Hmac<Sha256>;

/// The keyed hash a store looks scopes and subjects up by: HMAC-SHA256 under the store's secret.
/// `Debug` shows nothing of the secret.
#[derive(Clone)]
pub struct LookupKey(HmacSha256);

impl LookupKey {
    /// A lookup key from the store's secret (at least 32 bytes).
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() < LOOKUP_HASH_LEN {
            return Err(Error::crypto(format!(
                "a key store's lookup secret must have at least {LOOKUP_HASH_LEN} bytes, found {}",
                secret.len()
            )));
        }
        Ok(LookupKey(
            <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length"),
        ))
    }

    fn hash(&self, tag: u8, parts: &[&[u8]]) -> [u8; LOOKUP_HASH_LEN] {
        let mut mac = self.0.clone();
        mac.update(&[tag]);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The hash of the scope of `key_value` in key group `group` (the window is kept apart, in
    /// [`ScopeRequest::window_start_ms`]).
    pub fn scope_hash(&self, group: &str, key_value: &[u8]) -> ScopeHash {
        ScopeHash(self.hash(SCOPE_TAG, &[group.as_bytes(), key_value]))
    }

    /// The hash of a data-subject id.
    pub fn subject_hash(&self, subject: &[u8]) -> SubjectHash {
        SubjectHash(self.hash(SUBJECT_TAG, &[subject]))
    }

    /// The hash of a key group (`batch_job_group_id`): what a store finds a group's keys by.
    pub fn group_hash(&self, group: &str) -> GroupHash {
        GroupHash(self.hash(GROUP_TAG, &[group.as_bytes()]))
    }
}

impl fmt::Debug for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupKey(**REDACTED**)")
    }
}

macro_rules! lookup_hash {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// A keyed hash of personal data is still pseudonymous personal data: `Debug` shows
        /// nothing of it.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; LOOKUP_HASH_LEN]);

        impl $name {
            /// The hash as a store keeps it.
            pub fn as_bytes(&self) -> &[u8; LOOKUP_HASH_LEN] {
                &self.0
            }

            /// A hash read back from a store.
            pub fn from_bytes(bytes: [u8; LOOKUP_HASH_LEN]) -> Self {
                $name(bytes)
            }

            /// Lowercase hex, for receipts and listings. Only where a hash is meant to be shown
            /// (a receipt names the subject it erased): it is still pseudonymous data.
            pub fn to_hex(&self) -> String {
                self.0.iter().map(|b| format!("{b:02x}")).collect()
            }

            /// Parses [`Self::to_hex`]'s output.
            pub fn from_hex(text: &str) -> Option<Self> {
                let text = text.trim();
                if text.len() != 2 * LOOKUP_HASH_LEN || !text.is_ascii() {
                    return None;
                }
                let mut out = [0u8; LOOKUP_HASH_LEN];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
                }
                Some($name(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(**REDACTED**)"))
            }
        }
    };
}

lookup_hash!(
    /// The keyed hash of (key group, keyField value): what a store looks a scope up by.
    ScopeHash
);
lookup_hash!(
    /// The keyed hash of a data-subject id.
    SubjectHash
);
lookup_hash!(
    /// The keyed hash of a key group. A group id is not personal data, but a store keeps it
    /// hashed (its name sealed beside it), like every other lookup.
    GroupHash
);

/// What a key is for, recorded with it when it is created: its key group and retention policy.
/// Neither is personal data; stores keep the group name encrypted under the master key anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyLabels {
    /// The key group (`batch_job_group_id`, or the run's fresh group).
    pub group: String,
    /// The job's `policy_id` (may be empty).
    pub policy_id: String,
}

/// One data key: the key of one scope.
pub struct DataKey {
    /// The public handle of the key, written next to every record it encrypted.
    pub key_link: Uuid,
    /// The Tink key id, in `[1, 2^31 - 1]`. Not unique across keys: look keys up by `key_link`.
    pub key_id: u32,
    /// The AES-256-SIV key.
    pub material: KeyMaterial,
    /// Start of the key's time window, epoch milliseconds.
    pub window_start_ms: i64,
    /// When the key may be purged, epoch milliseconds.
    pub expires_at_ms: i64,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("key_link", &self.key_link)
            .field("key_id", &self.key_id)
            .field("material", &self.material)
            .field("window_start_ms", &self.window_start_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// A request for the key of one scope. It carries hashes only: see the
/// [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRequest {
    /// The hash of (key group, keyField value).
    pub scope: ScopeHash,
    /// Start of the time window, epoch milliseconds.
    pub window_start_ms: i64,
    /// Expiry to record if the key is created now, epoch milliseconds.
    pub expires_at_ms: i64,
    /// The hash of the data-subject id of the records using this key, when the contract names a
    /// `dataSubjectField`.
    pub subject: Option<SubjectHash>,
    /// Group and policy, recorded if the key is created now (shared by a run's requests).
    pub labels: Arc<KeyLabels>,
}

/// The answer to one [`ScopeRequest`].
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    /// The scope's key.
    pub key: Arc<DataKey>,
    /// Whether this call created it.
    pub created: bool,
    /// Whether the scope was forgotten before (it has a tombstone): the key is a new one, and
    /// the records using it are counted in the job summary.
    pub after_forget: bool,
}

/// What a store knows about a key, without its material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key link.
    pub key_link: Uuid,
    /// Start of the key's window, epoch milliseconds.
    pub window_start_ms: i64,
    /// When the key may be purged, epoch milliseconds.
    pub expires_at_ms: i64,
    /// When the key was created, epoch milliseconds.
    pub created_at_ms: i64,
    /// The key group; `None` for keys made before stores recorded it.
    pub group: Option<String>,
    /// The policy id; `None` for keys made before stores recorded it.
    pub policy_id: Option<String>,
}

/// A key with the policy it was made under: one row of a keys export.
#[derive(Debug, Clone)]
pub struct ExportedKey {
    /// The key.
    pub key: Arc<DataKey>,
    /// Its policy id (empty when none, or unknown).
    pub policy_id: String,
    /// When it was created (epoch milliseconds, the creating worker's clock).
    pub created_at_ms: i64,
}

/// Keys per group, window and policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyStats {
    /// The key group (`None`: keys made before stores recorded it).
    pub group: Option<String>,
    /// Window start, epoch milliseconds.
    pub window_start_ms: i64,
    /// The policy id (`None`: unknown).
    pub policy_id: Option<String>,
    /// Number of keys.
    pub keys: u64,
    /// The earliest expiry among them, epoch milliseconds.
    pub earliest_expiry_ms: i64,
}

/// A data subject and how many keys are linked to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectKeys {
    /// The subject's hash.
    pub subject: SubjectHash,
    /// Keys linked to it.
    pub keys: u64,
}

/// What forgetting a subject destroyed: the substance of an erasure receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// The subject's hash.
    pub subject: SubjectHash,
    /// The key links of the destroyed keys.
    pub key_links: Vec<Uuid>,
    /// When, epoch milliseconds (the store's clock).
    pub at_ms: i64,
}

/// An operation recorded in a store's audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AuditOperation {
    /// Keys were created by a job run.
    Created,
    /// A subject was forgotten.
    Forgotten,
    /// Expired keys were purged.
    Purged,
    /// The master key was rotated.
    Rotated,
    /// Keys were exported.
    Exported,
}

impl AuditOperation {
    /// The stable lowercase name stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOperation::Created => "created",
            AuditOperation::Forgotten => "forgotten",
            AuditOperation::Purged => "purged",
            AuditOperation::Rotated => "rotated",
            AuditOperation::Exported => "exported",
        }
    }

    /// Inverse of [`Self::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "created" => AuditOperation::Created,
            "forgotten" => AuditOperation::Forgotten,
            "purged" => AuditOperation::Purged,
            "rotated" => AuditOperation::Rotated,
            "exported" => AuditOperation::Exported,
            _ => return None,
        })
    }
}

/// One entry of a store's audit log: an operation, its counts and time, and at most a subject's
/// hash — never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When, epoch milliseconds.
    pub at_ms: i64,
    /// What happened.
    pub operation: AuditOperation,
    /// How many keys it concerned.
    pub keys: u64,
    /// The subject it concerned (forgetting).
    pub subject: Option<SubjectHash>,
    /// The key group it concerned (created, exported).
    pub group: Option<String>,
    /// A short free text chosen by the caller (never a value): "job clickstream.json",
    /// "to s3://lake/keys.csv".
    pub detail: String,
}

/// What [`KeyStore::rotate_master`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Keys re-wrapped by this call.
    pub rewrapped: u64,
    /// Whether it finished a rotation an earlier call had begun.
    pub resumed: bool,
    /// Whether the store was already under the new key (nothing to do).
    pub already_done: bool,
}

/// The fingerprint stores record of the master key wrapping each key: the first 8 bytes of
/// `HMAC-SHA256(master key, label)`, which says nothing about the key.
pub fn master_key_fingerprint(master: &envelope::MasterKey) -> i64 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(master.expose().as_slice())
        .expect("HMAC takes any key length");
    mac.update(b"keylink/master-key-fingerprint/v1");
    let out = mac.finalize().into_bytes();
    i64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

/// The current time, epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Appends `entry` to the store's audit log where the store keeps one. A job's outputs do not
/// depend on it, so a failure is logged, not returned; a store without an audit log is skipped.
pub async fn audit_best_effort(store: &dyn KeyStore, entry: &AuditEntry) {
    match store.append_audit(entry).await {
        Ok(()) => {}
        Err(e) if e.kind() == crate::error::ErrorKind::NotSupported => {}
        Err(e) => tracing::warn!(
            error = %e,
            operation = entry.operation.as_str(),
            "could not append to the key store's audit log"
        ),
    }
}

fn unsupported<T>(store: &(impl KeyStore + ?Sized), what: &str) -> Result<T> {
    Err(Error::new(
        crate::error::ErrorKind::NotSupported,
        format!("{} does not support {what}", store.describe()),
    ))
}

/// A durable store of data keys. Implementations must be safe for concurrent use by many tasks
/// (and, for shared stores, many processes): two concurrent `get_or_create` calls for one scope
/// return the same key.
#[async_trait]
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// The keyed hash this store looks scopes and subjects up by. The engine reads it once, when
    /// it starts a run, and hashes every keyField value and subject id with it.
    fn lookup_key(&self) -> &LookupKey;

    /// Returns the key of every scope, in request order, creating missing ones. New keys (and new
    /// subject links) are committed when this returns (every handle of the store sees them) and
    /// durable once [`KeyStore::sync`] returns. When a scope appears several times in one call,
    /// only its first request reports `created`.
    async fn get_or_create(&self, scopes: &[ScopeRequest]) -> Result<Vec<ResolvedKey>>;

    /// Makes every key `get_or_create` returned so far — on this handle, and keys it returned
    /// that other handles made — durable. keylink calls it before it writes anything encrypted
    /// with those keys (SPEC §2: a key is durable before any ciphertext made with it is written),
    /// once for all the batches waiting, so a store may commit without waiting for the disk and
    /// flush here, off its serial path.
    ///
    /// The default does nothing: for stores whose `get_or_create` returns only durable keys.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// The caller will ask for no new keys for now (a batch job is making its outputs' final
    /// flushes): a store may do here, beside them, the tidying it would otherwise do when it
    /// closes, once nothing else runs. Every key is already durable ([`KeyStore::sync`]), so the
    /// caller only logs a failure. The embedded store copies its write-ahead log into its file.
    ///
    /// The default does nothing.
    async fn settle(&self) -> Result<()> {
        Ok(())
    }

    /// Looks keys up by key link; `None` for links the store does not have (never made, forgotten
    /// or purged).
    async fn get_by_key_links(&self, links: &[Uuid]) -> Result<Vec<Option<Arc<DataKey>>>>;

    /// The key links recorded for a data subject.
    async fn subject_key_links(&self, subject: &SubjectHash) -> Result<Vec<Uuid>>;

    /// Deletes every key of a data subject (crypto-shredding); returns how many were deleted.
    ///
    /// A key belongs to a scope (a keyField value in a window), not to a person: when records of
    /// several subjects share a scope, forgetting one of them shreds that key for all of them.
    async fn forget_subject(&self, subject: &SubjectHash) -> Result<u64>;

    /// Deletes keys whose `expires_at_ms` is before `now_ms`; returns how many were deleted.
    async fn purge_expired(&self, now_ms: i64) -> Result<u64>;

    /// A human description for logs and the summary (a path or a URL without its password; never
    /// a secret).
    fn describe(&self) -> String;

    // Key lifecycle (SPEC §9). The defaults answer "not supported": a store that cannot list or
    // audit must say so rather than pretend there is nothing.

    /// The keys linked to a subject, with their window, group and policy.
    async fn subject_keys(&self, _subject: &SubjectHash) -> Result<Vec<KeyInfo>> {
        unsupported(self, "listing a subject's keys")
    }

    /// Every subject with a linked key, and how many keys each has.
    async fn list_subjects(&self) -> Result<Vec<SubjectKeys>> {
        unsupported(self, "listing subjects")
    }

    /// Forgets a subject like [`Self::forget_subject`], tombstones the scopes of its keys (so a
    /// later record of such a scope gets a new key and is reported with
    /// [`ResolvedKey::after_forget`]) and appends a `forgotten` entry to the audit log, all in
    /// one transaction; returns what was destroyed.
    async fn forget(&self, _subject: &SubjectHash) -> Result<Forgotten> {
        unsupported(self, "forgetting with a receipt")
    }

    /// Keys per group, window and policy.
    async fn key_stats(&self) -> Result<Vec<KeyStats>> {
        unsupported(self, "key statistics")
    }

    /// How many keys [`Self::purge_expired`] would delete at `now_ms`.
    async fn count_expired(&self, _now_ms: i64) -> Result<u64> {
        unsupported(self, "counting expired keys")
    }

    /// The keys of a group, created at or after `created_since_ms` when given, oldest first.
    async fn export_keys(
        &self,
        _group: &GroupHash,
        _created_since_ms: Option<i64>,
    ) -> Result<Vec<ExportedKey>> {
        unsupported(self, "exporting keys")
    }

    /// Appends an entry to the audit log.
    async fn append_audit(&self, _entry: &AuditEntry) -> Result<()> {
        unsupported(self, "an audit log")
    }

    /// The audit log, oldest first.
    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        unsupported(self, "an audit log")
    }

    /// Re-wraps every key (and every other secret the store keeps under the master key) under
    /// `new_master`, crash-safe: interrupted anywhere, every key stays readable (under the old or
    /// the new master key), and calling it again with the same new key finishes the rotation.
    /// When it returns, the store opens with `new_master` only, and the old master key opens
    /// nothing in it. Appends a `rotated` entry to the audit log.
    async fn rotate_master(&self, _new_master: &envelope::MasterKey) -> Result<RotationReport> {
        unsupported(self, "master key rotation")
    }
}

/// Configuration of a key store, selected by its `type` tag in `keylink.yaml`:
/// `key_store: { type: embedded, path: ./keylink-keys.db }`.
#[async_trait]
#[typetag::serde(tag = "type")]
pub trait KeyStoreConfig: fmt::Debug + Send + Sync {
    /// Checks the settings without I/O. Messages name the bad setting.
    fn validate(&self) -> Result<()>;

    /// Opens the store. Relative paths are resolved against [`BuildContext::base_dir`] (the
    /// config file's folder).
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn KeyStore>>;

    /// The files the store keeps on this machine (its database, journal, master key file), as
    /// (what, where): no job output may be one of them — a keys export written over the key
    /// store's database would destroy every key (SPEC §8). Checked before data flows, without
    /// opening the store. A store on a server has none (the default).
    fn files(
        &self,
        _ctx: &BuildContext,
    ) -> Result<Vec<(String, crate::connector::ObjectLocation)>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_separated_and_redacted() {
        let a = LookupKey::new(&[1; 32]).unwrap();
        let b = LookupKey::new(&[2; 32]).unwrap();
        assert_eq!(a.scope_hash("g", b"v"), a.scope_hash("g", b"v"));
        assert_ne!(a.scope_hash("g", b"v"), b.scope_hash("g", b"v"));
        // length prefixes keep ("ab","c") and ("a","bc") apart
        assert_ne!(a.scope_hash("ab", b"c"), a.scope_hash("a", b"bc"));
        // domain tags keep a subject apart from a scope of the empty group
        assert_ne!(
            a.subject_hash(b"v").as_bytes(),
            a.scope_hash("", b"v").as_bytes()
        );
        let shown = format!(
            "{a:?} {:?} {:?}",
            a.scope_hash("g", b"v"),
            a.subject_hash(b"v")
        );
        assert!(!shown.contains("[1"), "{shown}");
        assert_eq!(shown.matches("REDACTED").count(), 3, "{shown}");
        assert!(LookupKey::new(&[0; 16]).is_err());
    }
}
