//! The key store: where data keys live, one per key scope.
//!
//! A *key scope* is (key group, keyField value, time window). The engine asks the store for the
//! keys of many scopes at once ([`KeyStore::get_or_create`]); the store returns the existing key of
//! each scope or creates one, atomically, and makes new keys **durable before it returns** — the
//! engine writes ciphertext only after that, so no ciphertext can outlive the loss of its key by
//! accident.
//!
//! A store never keeps plaintext keyField values or data-subject ids: it looks them up by a keyed
//! hash (HMAC-SHA256 under a secret of the store).
//!
//! The embedded default is [`embedded::EmbeddedKeyStore`]: one SQLite file, key material encrypted
//! at rest with AES-256-GCM under a master key.

pub mod embedded;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::crypto::KeyMaterial;
use crate::error::Result;

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

/// A request for the key of one scope.
#[derive(Clone, Copy)]
pub struct ScopeRequest<'a> {
    /// The key group: `batch_job_group_id`, or one fresh id per job run.
    pub group: &'a str,
    /// The keyField value (plaintext; the store hashes it and never stores it).
    pub key_value: &'a [u8],
    /// Start of the time window, epoch milliseconds.
    pub window_start_ms: i64,
    /// Expiry to record if the key is created now, epoch milliseconds.
    pub expires_at_ms: i64,
    /// The data-subject id of the records using this key, when the contract names a
    /// `dataSubjectField` (plaintext; the store hashes it and never stores it).
    pub subject: Option<&'a [u8]>,
}

impl fmt::Debug for ScopeRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeRequest")
            .field("group", &self.group)
            .field("key_value", &"**REDACTED**")
            .field("window_start_ms", &self.window_start_ms)
            .field("subject", &self.subject.map(|_| "**REDACTED**"))
            .finish()
    }
}

/// The answer to one [`ScopeRequest`].
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    /// The scope's key.
    pub key: Arc<DataKey>,
    /// Whether this call created it.
    pub created: bool,
}

/// A durable store of data keys. Implementations must be safe for concurrent use by many tasks
/// (and, for shared stores, many processes): two concurrent `get_or_create` calls for one scope
/// return the same key.
#[async_trait]
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// Returns the key of every scope, in request order, creating missing ones. New keys (and new
    /// subject links) are durable when this returns.
    async fn get_or_create(&self, scopes: &[ScopeRequest<'_>]) -> Result<Vec<ResolvedKey>>;

    /// Looks keys up by key link; `None` for links the store does not have (never made, forgotten
    /// or purged).
    async fn get_by_key_links(&self, links: &[Uuid]) -> Result<Vec<Option<Arc<DataKey>>>>;

    /// The key links recorded for a data subject (plaintext id; hashed by the store).
    async fn subject_key_links(&self, subject: &[u8]) -> Result<Vec<Uuid>>;

    /// Deletes every key of a data subject (crypto-shredding); returns how many were deleted.
    ///
    /// A key belongs to a scope (a keyField value in a window), not to a person: when records of
    /// several subjects share a scope, forgetting one of them shreds that key for all of them.
    async fn forget_subject(&self, subject: &[u8]) -> Result<u64>;

    /// Deletes keys whose `expires_at_ms` is before `now_ms`; returns how many were deleted.
    async fn purge_expired(&self, now_ms: i64) -> Result<u64>;

    /// A human description for logs and the summary (a path or URL; never a secret).
    fn describe(&self) -> String;
}

/// Configuration of a key store, selected by its `type` tag in `keylink.yaml`:
/// `key_store: { type: embedded, path: ./keylink-keys.db }`.
#[typetag::serde(tag = "type")]
pub trait KeyStoreConfig: fmt::Debug + Send + Sync {
    /// Checks the settings without I/O.
    fn validate(&self) -> Result<()>;

    /// Opens the store. Relative paths are resolved against `base_dir` (the config file's folder).
    fn build(&self, base_dir: &Path) -> Result<Arc<dyn KeyStore>>;
}
