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
//! Key stores are plug-in crates, like connectors: `keylink-keystore-embedded` (one SQLite file,
//! the CLI's default) and `keylink-keystore-postgres`. A store registers its configuration under
//! its `type` tag with `#[typetag::serde(name = "…")]`; core never names a store. The conformance
//! suite every store should pass is [`crate::testkit::keystore`] (feature `testkit`).

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The keyed hash this store looks scopes and subjects up by. The engine reads it once, when
    /// it starts a run, and hashes every keyField value and subject id with it.
    fn lookup_key(&self) -> &LookupKey;

    /// Returns the key of every scope, in request order, creating missing ones. New keys (and new
    /// subject links) are durable when this returns. When a scope appears several times in one
    /// call, only its first request reports `created`.
    async fn get_or_create(&self, scopes: &[ScopeRequest]) -> Result<Vec<ResolvedKey>>;

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
