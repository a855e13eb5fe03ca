//! The embedded key store: one local SQLite file, no server.
//!
//! ```yaml
//! key_store: { type: embedded, path: ./keylink-keys.db }
//! ```
//!
//! # What is stored
//!
//! - Data keys, each wrapped with AES-256-GCM under a 32-byte **master key**, with a random 96-bit
//!   nonce and associated data binding the wrapped key to its row (key link, scope hash, window
//!   start, key id), so rows cannot be swapped or moved to another scope.
//! - Scope lookups by [`ScopeHash`] (`HMAC-SHA256(store secret, group, keyField value)`) plus
//!   the window start in its own column; subject links by [`SubjectHash`]. The engine computes
//!   both with the store's [`LookupKey`] before calling the store, which never receives a
//!   plaintext keyField value or data-subject id.
//! - Per key (schema version 2, migrated from 1 on open): its key group as a keyed hash, the
//!   group's name sealed under the master key in `key_groups`, its policy id, and the
//!   fingerprint of the master key that wraps it; tombstones of forgotten scopes (scope hash and
//!   window); an audit log (operation, counts, time, subject hash — never a value).
//! - The **store secret** (32 random bytes, made with the database) wrapped under the master key,
//!   and a verifier of the master key (`HMAC-SHA256(master key, label)`), so opening the store with
//!   another master key fails with "the master key does not match key store `<path>`".
//!
//! # Master key
//!
//! In order: the environment variable [`MASTER_KEY_ENV`] (base64 of 32 bytes), else the config's
//! `master_key_file`, else `<db path>.master-key` (see [`default_master_key_file`]). When the key
//! file does not exist and the database holds no store yet, a new key file is created with mode
//! 0600 and a warning names it: losing it loses every key.
//!
//! # Durability and concurrency
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a commit is on disk when it returns —
//! except the one of [`KeyStore::get_or_create`]: a call that creates keys or subject links
//! commits once, in one `BEGIN IMMEDIATE` transaction, before returning, with
//! `synchronous=NORMAL`: the keys are in the WAL (safe from a crash of the process, seen by every
//! handle) and [`KeyStore::sync`] makes them durable by flushing the WAL, which keylink does
//! before it writes anything encrypted with them. The flush needs no lock, so it runs beside the
//! next key transactions instead of inside each one. Calls whose keys and links all exist only
//! read, from a WAL snapshot, without taking the write lock. `BEGIN IMMEDIATE` plus a busy
//! timeout serialises writers across tasks and across processes sharing the file; the
//! `UNIQUE (scope_hash, window_start_ms)` constraint backs the one-key-per-scope rule.
//! `secure_delete` is on and deletions end with a WAL checkpoint, so forgotten and purged keys do
//! not linger in the files.
//!
//! # Key log
//!
//! New keys and subject links are appended to two log tables (`logged_keys`, `logged_links`; schema
//! version 3 made them as `key_log` and `link_log`) instead of being inserted into the indexed
//! tables. Scope and subject hashes are random, so each indexed insert lands on a random B-tree
//! page, and every commit rewrote most pages of four indexes (~8 page writes per new key at 1M
//! rows, the slowest, serial part of a job: `cargo xtask bench`). An append touches the last page
//! only. Each handle keeps an index of the log in memory (scope → log row, subject links), read
//! from the log inside every transaction that uses it: rows other handles or processes appended are
//! read by id, and a generation number in `meta` tells it to read the log again from scratch.
//!
//! The log is folded into the indexed tables, in scope order, in one transaction: by the
//! `get_or_create` call after which it holds `LOG_FOLD_AT` (200,000) keys or links, and first thing
//! by every other operation (they read the indexed tables only). Forgetting, purging and
//! re-wrapping fold inside their own transaction, so a key another process just logged cannot
//! escape them. A key is committed once its log row is, before the call returns, and durable after
//! the next [`KeyStore::sync`].
//!
//! A fold inserts keys in scope order and then their links in link order (schema version 4,
//! `MIGRATION_4`): key links have a table of their own, `key_links`, because as the primary key
//! of `keys` they took every key of a fold to a random page of their index. For the same reason
//! a group's keys are indexed by the minute they were made, not the millisecond. At 10M rows (four
//! folds of 200k keys in the job) the folds took 0.8, 1.5, 2.0 and 2.1 s with the minute's index
//! alone and 0.8, 0.9, 1.0 and 1.5 s with both changes. Version 4 also renamed the log tables:
//! a keylink process that opened the store before the migration, and would fold keys without
//! their links (which forgetting goes through), fails at its next call instead.
//!
//! A scope not in the log is looked up in `keys`, and most such lookups find nothing: a new key
//! is mostly for a new window (today's), which no fold has reached. So `meta` holds an upper
//! bound of the windows in `keys` (`folded_max_window`), written by every fold with the
//! generation it made (`folded_max_window_generation`), and a scope of a later window skips the
//! lookup. The bound is trusted only while the generation is that one: a fold by an older
//! keylink (which knows nothing of it) changes the generation, and until a fold writes it again
//! every lookup is made. Deleting keys leaves it an upper bound. Measured on a new store, 95k new
//! keys with a subject each in calls of 280 (as in `cargo xtask bench`'s A), one thread: 703 →
//! 608 ms (medians of 7, interleaved); A itself moved within the machine's noise.
//!
//! # Master key rotation
//!
//! [`KeyStore::rotate_master`] is crash-safe: the new key is first sealed under the current one
//! into the meta table, rows are then re-wrapped in short transactions (wrapped key and
//! master-key fingerprint changed together), and a last transaction re-wraps the rest, the group
//! names and the store secret and switches the verifier. Interrupted anywhere, a store opened
//! with the old key reads every row (it unseals the pending new key), and the same call
//! finishes; afterwards the old key opens nothing. A write transaction checks the verifier, so a
//! handle still on the old key cannot add keys after a rotation.
//!
//! [`ScopeHash`]: keylink_core::keystore::ScopeHash

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::Mac;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use uuid::Uuid;
use zeroize::Zeroizing;

use keylink_core::connector::BuildContext;
use keylink_core::crypto::{KEY_LEN, KeyMaterial, fill_random};
use keylink_core::error::{Error, ErrorKind, Result};
pub use keylink_core::keystore::envelope::{MASTER_KEY_ENV, MASTER_KEY_LEN, MasterKey};
use keylink_core::keystore::envelope::{
    MasterCiphers as Ciphers, RandomPool, data_key_aad, master_key_verifier, seal, seal_with,
    unseal,
};
use keylink_core::keystore::{
    AuditEntry, AuditOperation, DataKey, ExportedKey, Forgotten, GroupHash, KeyInfo, KeyStats,
    KeyStore, KeyStoreConfig, LookupKey, ResolvedKey, RotationReport, ScopeRequest, SubjectHash,
    SubjectKeys, master_key_fingerprint,
};

/// The schema version this code writes and reads. Older stores are migrated on open
/// ([`MIGRATION_2`], [`MIGRATION_3`], [`MIGRATION_4`]).
const SCHEMA_VERSION: i64 = 4;

/// Rows re-wrapped per transaction by a master key rotation: short transactions, so other
/// writers wait little and a kill loses at most one uncommitted batch (which a rerun redoes).
const ROTATION_BATCH: usize = 500;

/// Associated data of the next master key, sealed under the current one while a rotation runs.
const NEXT_MASTER_AAD: &[u8] = b"keylink/embedded/next-master-key/v1";

/// Prefix of the associated data of a sealed group name.
const GROUP_NAME_AAD: &[u8] = b"keylink/embedded/group-name/v1";

/// How long a call waits for another writer (task or process) before failing as transient.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Length of an HMAC-SHA256 lookup hash.
const HASH_LEN: usize = 32;

/// Associated data of the wrapped store secret.
const STORE_SECRET_AAD: &[u8] = b"keylink/embedded/store-secret/v1";

/// Label of the master key verifier.
const VERIFIER_LABEL: &[u8] = b"keylink/embedded/master-key-verifier/v1";

/// Prefix of the associated data of a wrapped data key.
const DATA_KEY_AAD: &[u8] = b"keylink/embedded/data-key/v1";

const SCHEMA: &str = "
CREATE TABLE meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value ANY NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE keys (
    key_link        BLOB PRIMARY KEY NOT NULL,
    scope_hash      BLOB NOT NULL,
    window_start_ms INTEGER NOT NULL,
    key_id          INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    wrapped_key     BLOB NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    UNIQUE (scope_hash, window_start_ms)
) STRICT;

CREATE INDEX keys_expires_at ON keys (expires_at_ms);

CREATE TABLE subject_keys (
    subject_hash BLOB NOT NULL,
    key_link     BLOB NOT NULL,
    PRIMARY KEY (subject_hash, key_link)
) STRICT, WITHOUT ROWID;

CREATE INDEX subject_keys_key_link ON subject_keys (key_link);
";

/// Schema version 2 (key lifecycle, SPEC §9): per key its group (hashed; the name sealed in
/// `key_groups`), policy and the fingerprint of the master key wrapping it; tombstones of
/// forgotten scopes; the audit log. `master_fp` of existing rows is filled in by the migration
/// (the master key was just verified).
const MIGRATION_2: &str = "
ALTER TABLE keys ADD COLUMN group_hash BLOB;
ALTER TABLE keys ADD COLUMN policy_id TEXT;
ALTER TABLE keys ADD COLUMN master_fp INTEGER;
CREATE INDEX keys_group ON keys (group_hash, created_at_ms);
CREATE INDEX keys_master_fp ON keys (master_fp);

CREATE TABLE key_groups (
    group_hash  BLOB PRIMARY KEY NOT NULL,
    sealed_name BLOB NOT NULL,
    master_fp   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE tombstones (
    scope_hash      BLOB NOT NULL,
    window_start_ms INTEGER NOT NULL,
    forgotten_at_ms INTEGER NOT NULL,
    PRIMARY KEY (scope_hash, window_start_ms)
) STRICT, WITHOUT ROWID;

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms        INTEGER NOT NULL,
    operation    TEXT NOT NULL,
    keys         INTEGER NOT NULL,
    subject_hash BLOB,
    group_hash   BLOB,
    detail       TEXT NOT NULL
) STRICT;
";

/// Schema version 3: the key log (module docs, "Key log"). `log_generation` changes whenever rows
/// leave the log or keys are deleted, so other handles re-read their index of it.
const MIGRATION_3: &str = "
CREATE TABLE key_log (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key_link        BLOB NOT NULL,
    scope_hash      BLOB NOT NULL,
    window_start_ms INTEGER NOT NULL,
    key_id          INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    wrapped_key     BLOB NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    group_hash      BLOB,
    policy_id       TEXT,
    master_fp       INTEGER
) STRICT;

CREATE TABLE link_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_hash BLOB NOT NULL,
    key_link     BLOB NOT NULL
) STRICT;

INSERT INTO meta (name, value) VALUES ('log_generation', 0);
";

/// The minute of a time in ms, in SQL: `keys_group_minute` indexes `minute!("created_at_ms")`
/// ([`MIGRATION_4`]), and a query must write the expression the same way for SQLite to use it.
macro_rules! minute {
    ($ms:literal) => {
        concat!($ms, " / 60000")
    };
}

/// Schema version 4: a group's keys indexed by their minute of creation (`minute!`) instead of the
/// millisecond. A fold inserts the log in scope order (random with respect to time), so with
/// milliseconds its keys went to as many places in `keys_group` as they had creation times (570
/// in a fold of the 1M-row bench), and those pages, beside the random `key_link` index,
/// overflowed the page cache ([`CACHE_KIB`]). By the minute, the keys of a fold go to one place
/// per group and minute, in row order: appends. Modelled with this schema (Python `sqlite3`, a
/// fold of 200k keys made over 570 ms): 2.98 s → 1.66 s into an empty table, 4.43 s → 3.39 s
/// into 800k keys (1.48 s into an empty table without the index at all). A group's keys made
/// since a time ([`EXPORT_KEYS`]) are still found through it, reading at most a minute's keys
/// too many.
///
/// And key links in a table of their own, `key_links` (link → `keys.id`, as `key_row`), filled by a
/// fold in link order after the keys are inserted in scope order: with the link as the primary key
/// of `keys`, each key of a fold went to a random page of that index, which, once the index outgrew
/// the page cache, was read and written again for nearly every key. In link order each page is read
/// and written once. Modelled as above, into 800k keys: 3.18 s → 1.80 s (1.55 s → 1.30 s into an
/// empty table). `keys` is rebuilt for it (SQLite cannot drop a primary key), with an explicit `id`
/// that keeps the rows' ids (a `VACUUM` may renumber implicit rowids, not these); a trigger deletes
/// a key's link with the key, whichever statement deletes it. Migrating a store of 953k keys took
/// ~7 s here; the old table's pages stay in the file, free for later keys (a `VACUUM` returns
/// them).
const MIGRATION_4: &str = concat!(
    "CREATE TABLE keys_4 (
    id              INTEGER PRIMARY KEY,
    key_link        BLOB NOT NULL,
    scope_hash      BLOB NOT NULL,
    window_start_ms INTEGER NOT NULL,
    key_id          INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    wrapped_key     BLOB NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    group_hash      BLOB,
    policy_id       TEXT,
    master_fp       INTEGER,
    UNIQUE (scope_hash, window_start_ms)
) STRICT;
INSERT INTO keys_4 (id, key_link, scope_hash, window_start_ms, key_id, expires_at_ms, wrapped_key,
    created_at_ms, group_hash, policy_id, master_fp)
SELECT rowid, key_link, scope_hash, window_start_ms, key_id, expires_at_ms, wrapped_key,
    created_at_ms, group_hash, policy_id, master_fp FROM keys ORDER BY rowid;
DROP TABLE keys;
ALTER TABLE keys_4 RENAME TO keys;
CREATE INDEX keys_expires_at ON keys (expires_at_ms);
CREATE INDEX keys_master_fp ON keys (master_fp);
CREATE INDEX keys_group_minute ON keys (group_hash, ",
    minute!("created_at_ms"),
    ");
CREATE TABLE key_links (
    key_link BLOB PRIMARY KEY NOT NULL,
    key_row  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO key_links (key_link, key_row) SELECT key_link, id FROM keys ORDER BY key_link;
CREATE TRIGGER keys_deleted AFTER DELETE ON keys BEGIN
    DELETE FROM key_links WHERE key_link = old.key_link;
END;
ALTER TABLE key_log RENAME TO logged_keys;
ALTER TABLE link_log RENAME TO logged_links;
"
);

/// A group's keys made at or after a time ([`Inner::export_keys`]), through `keys_group_minute`:
/// the minute's condition follows from the millisecond's, and lets SQLite use the index. Not
/// sorted by SQLite, whose sorter may spill wrapped keys to a temporary file.
const EXPORT_KEYS: &str = concat!(
    "SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms, wrapped_key, \
     master_fp, policy_id, created_at_ms FROM keys WHERE group_hash = ?1 AND created_at_ms >= ?2 \
     AND ",
    minute!("created_at_ms"),
    " >= ",
    minute!("?2")
);

/// The key of a key link.
const KEY_BY_LINK: &str = "SELECT scope_hash, window_start_ms, key_id, expires_at_ms, \
    wrapped_key, master_fp FROM keys \
    WHERE id = (SELECT key_row FROM key_links WHERE key_link = ?1)";

/// A subject's keys, as [`KeyStore::subject_keys`] lists them.
const SUBJECT_KEYS: &str = "SELECT k.key_link, k.window_start_ms, k.expires_at_ms, \
    k.created_at_ms, k.group_hash, k.policy_id FROM subject_keys s \
    JOIN key_links l ON l.key_link = s.key_link JOIN keys k ON k.id = l.key_row \
    WHERE s.subject_hash = ?1 ORDER BY k.window_start_ms, k.key_link";

/// The scopes of a subject's keys, which forgetting it tombstones.
const SUBJECT_SCOPES: &str = "SELECT k.key_link, k.scope_hash, k.window_start_ms \
    FROM subject_keys s JOIN key_links l ON l.key_link = s.key_link \
    JOIN keys k ON k.id = l.key_row WHERE s.subject_hash = ?1";

/// Deletes a subject's keys (their rows in `key_links` go with them: trigger `keys_deleted`).
const FORGET_KEYS: &str = "DELETE FROM keys WHERE id IN (SELECT l.key_row FROM subject_keys s \
    JOIN key_links l ON l.key_link = s.key_link WHERE s.subject_hash = ?1)";

/// Stores a key re-wrapped under another master key.
const REWRAP_KEY: &str = "UPDATE keys SET wrapped_key = ?1, master_fp = ?2 \
    WHERE id = (SELECT key_row FROM key_links WHERE key_link = ?3)";

/// Keys (or subject links) in the log at which a [`KeyStore::get_or_create`] call, after
/// committing, folds the log into the indexed tables, in one transaction. The log's index in
/// memory costs about 20 bytes per entry (~5 MB here). A fold costs ~8 us per key (`cargo xtask
/// bench`: 1.5 s for 190k keys), and the more keys go at once the fewer times each index page is
/// written. Folding the oldest rows a few thousand at a time
/// with every call instead was measured slower than one fold (it rewrites random index pages at
/// every commit again): at 1M rows, 2.8 s instead of 2.4 s for A on a store holding A's keys.
const LOG_FOLD_AT: usize = 200_000;

/// SQLite's page cache, in KiB (its default is 2 MiB). Lookups and inserts go to the key log
/// (in id order) and, through its index in memory, to single rows, so a small cache serves
/// them: measured at 1M rows (`cargo xtask bench`), 4 MiB instead of 16 MiB lowered a job's
/// peak RSS by 10–15 MB (B: ~104 → ~90 MB) at the same speed, on a fresh store and on one
/// holding 190k keys. Bounded, so memory does not grow with the store.
///
/// Folds ([`Inner::fold_log`]) use it too. They used to raise it to 16 MiB (and SQLite's sorter,
/// sized like the cache, with it): measured at 10M rows (A p2, four folds of 200k keys), that
/// spent ~25 MB for each fold, and peak RSS was 118–124 MB; with 4 MiB it is 83–89 MB (1M rows:
/// ~80). The folds take ~30% longer (1.4–2.5 s instead of 0.9–2.1 s; `keys stats` folding 190k
/// keys: 1.97 s instead of 1.65 s), at the same wall time for the 10M job.
const CACHE_KIB: usize = 4 << 10;

type LookupHash = [u8; HASH_LEN];

/// Where [`EmbeddedKeyStore::open`] gets the master key.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    /// The key itself (from [`MASTER_KEY_ENV`], a secret manager, or a test).
    Key(MasterKey),
    /// A file holding the base64 of the key. If it does not exist and the database holds no store
    /// yet, it is created with mode 0600.
    File(PathBuf),
}

impl MasterKeySource {
    /// The source the spec prescribes: [`MASTER_KEY_ENV`] if set, else `key_file`.
    pub fn from_env_or_file(key_file: PathBuf) -> Result<Self> {
        Self::from_env_value(std::env::var_os(MASTER_KEY_ENV), key_file)
    }

    fn from_env_value(env: Option<OsString>, key_file: PathBuf) -> Result<Self> {
        let what = format!("the environment variable {MASTER_KEY_ENV}");
        match env {
            None => Ok(MasterKeySource::File(key_file)),
            Some(value) => {
                let value = Zeroizing::new(
                    value
                        .into_string()
                        .map_err(|_| Error::config(format!("{what} is not valid UTF-8")))?,
                );
                if value.trim().is_empty() {
                    return Err(Error::config(format!(
                        "{what} is set but empty: set it to the base64 of {MASTER_KEY_LEN} bytes, \
                         or unset it to use the master key file {}",
                        key_file.display()
                    )));
                }
                Ok(MasterKeySource::Key(MasterKey::from_base64(&value, &what)?))
            }
        }
    }
}

/// The default master key file of a database: `<db path>.master-key`, next to the database.
pub fn default_master_key_file(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".master-key");
    PathBuf::from(name)
}

fn default_db_path() -> PathBuf {
    PathBuf::from("keylink-keys.db")
}

/// `key_store: { type: embedded, path: ./keylink-keys.db }`
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedKeyStoreConfig {
    /// Path of the database file; relative paths are relative to the config file. Default
    /// `keylink-keys.db`.
    #[serde(default = "default_db_path")]
    pub path: PathBuf,
    /// File holding the base64 master key; default `<path>.master-key`. `KEYLINK_MASTER_KEY` wins
    /// over it.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
}

impl Default for EmbeddedKeyStoreConfig {
    fn default() -> Self {
        EmbeddedKeyStoreConfig {
            path: default_db_path(),
            master_key_file: None,
        }
    }
}

impl EmbeddedKeyStoreConfig {
    /// The database path and the master key file, resolved against the context's base folder.
    fn resolve(&self, ctx: &BuildContext) -> (PathBuf, PathBuf) {
        let path = ctx.resolve_path(&self.path);
        let key_file = match &self.master_key_file {
            Some(file) => ctx.resolve_path(file),
            None => default_master_key_file(&path),
        };
        (path, key_file)
    }

    async fn build_with_env(
        &self,
        ctx: &BuildContext,
        env: Option<OsString>,
    ) -> Result<Arc<EmbeddedKeyStore>> {
        self.validate()?;
        let (path, key_file) = self.resolve(ctx);
        let source = MasterKeySource::from_env_value(env, key_file)?;
        let store = tokio::task::spawn_blocking(move || EmbeddedKeyStore::open(&path, source))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!("opening the key store failed: {e}"),
                )
            })??;
        Ok(Arc::new(store))
    }
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::KeyStore,
    name: "embedded",
    description: "one SQLite file next to the config (the default)",
    example: r#"{ "type": "embedded", "path": "./keylink-keys.db" }"#,
    schemes: &[],
    from_url: None,
    schema: keylink_core::schema::of::<EmbeddedKeyStoreConfig>,
});

#[async_trait]
#[typetag::serde(name = "embedded")]
impl KeyStoreConfig for EmbeddedKeyStoreConfig {
    fn validate(&self) -> Result<()> {
        check_db_path(&self.path).map_err(|e| e.context("key_store.path"))?;
        if let Some(file) = &self.master_key_file
            && file.as_os_str().is_empty()
        {
            return Err(Error::config(
                "key_store.master_key_file: the path is empty (omit it to use <path>.master-key)",
            ));
        }
        Ok(())
    }

    fn files(
        &self,
        ctx: &BuildContext,
    ) -> Result<Vec<(String, keylink_core::connector::ObjectLocation)>> {
        use keylink_core::connector::local_file_location;
        let (path, key_file) = self.resolve(ctx);
        let mut files = vec![(
            format!("the key store's database ({})", path.display()),
            local_file_location(&path)?,
        )];
        // SQLite's companions of the database: losing or replacing them loses committed keys
        for suffix in ["-wal", "-shm", "-journal"] {
            let p = companion(&path, suffix);
            files.push((
                format!("the key store's {suffix} file ({})", p.display()),
                local_file_location(&p)?,
            ));
        }
        files.push((
            format!("the key store's master key file ({})", key_file.display()),
            local_file_location(&key_file)?,
        ));
        Ok(files)
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn KeyStore>> {
        let store: Arc<dyn KeyStore> = self
            .build_with_env(ctx, std::env::var_os(MASTER_KEY_ENV))
            .await?;
        Ok(store)
    }
}

/// Rejects paths SQLite would not treat as a plain durable file.
fn check_db_path(path: &Path) -> Result<()> {
    let text = path.as_os_str();
    if text.is_empty() {
        return Err(Error::config("the key store path is empty"));
    }
    if text == ":memory:" {
        return Err(Error::config(
            "the key store path is ':memory:', which is not durable: name a file",
        ));
    }
    Ok(())
}

/// The embedded key store. See the [module documentation](self).
pub struct EmbeddedKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// AES-256-GCM under the master key(s), by fingerprint.
    ciphers: std::sync::RwLock<Ciphers>,
    /// HMAC-SHA256 keyed with the store secret, handed to the engine.
    lookup: LookupKey,
    /// What the key log holds. Locked after `conn`, never before.
    log: Mutex<LogIndex>,
    /// [`LOG_FOLD_AT`] (smaller in tests).
    fold_at: usize,
    /// Bits of the log index's fingerprints kept (all; few in tests, to make them collide).
    fingerprint_mask: u64,
    /// The WAL file, when the database is in WAL mode: then key transactions commit without an
    /// fsync and [`Inner::sync_wal`] flushes it; in the rollback journal every commit syncs.
    wal: Option<PathBuf>,
}

/// An index in memory of the key log's rows (module docs, "Key log"), read from the log tables
/// inside each transaction that uses it, so it is never ahead of or behind the database: rows
/// other handles appended are read by id, and when `meta.log_generation` differs from the one it
/// was read under (rows left the log or keys were deleted), it is read again from scratch.
#[derive(Debug, Default)]
struct LogIndex {
    /// `meta.log_generation` the index was read under; None: not read yet.
    generation: Option<i64>,
    /// Every key in `keys` has a window at or before this (module docs, "Key log"); None: not
    /// known under this generation, so every scope is looked up there.
    folded_max_window: Option<i64>,
    /// The highest `logged_keys` id read.
    keys_seen: i64,
    /// The highest `logged_links` id read.
    links_seen: i64,
    /// [`scope_fingerprint`] → `logged_keys` id, for every row of the log.
    keys: HashMap<u64, i64, FastHash>,
    /// [`link_fingerprint`] → `logged_links` id, for every row of the log.
    links: HashMap<u64, i64, FastHash>,
}

/// The hasher of the maps a key-store call fills: their keys are HMAC outputs or random links
/// (keyed by the store's secret, so nobody can choose them to collide). SipHash, the default,
/// hashing 40-byte scope ids, was ~0.5 % of a whole job's CPU (`perf`, 1M rows, 95k new keys).
type FastHash = foldhash::fast::RandomState;

/// 64 bits of a scope, as the log index's key: 8 bytes of an HMAC output are as good as any
/// hash, and 8 bytes per entry instead of 40 keep the index near 20 bytes per key. Two scopes
/// may share a fingerprint: a row found by it is checked, and a mismatch searches the log.
fn scope_fingerprint(id: &ScopeId) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
        ^ (id.1 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// 64 bits of a subject link (an HMAC output and a random UUID), as [`scope_fingerprint`].
fn link_fingerprint(subject: &LookupHash, link: &[u8; 16]) -> u64 {
    u64::from_le_bytes(subject[..8].try_into().expect("8 bytes"))
        ^ u64::from_le_bytes(link[..8].try_into().expect("8 bytes")).rotate_left(32)
}

impl fmt::Debug for EmbeddedKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedKeyStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedKeyStore {
    /// Opens the store at `path`, creating the database (and, for [`MasterKeySource::File`], the
    /// key file) on first use. Blocking.
    ///
    /// Fails with [`ErrorKind::KeyStore`] and "the master key does not match key store `<path>`"
    /// when the master key is not the one the store was made with.
    pub fn open(path: &Path, master_key: MasterKeySource) -> Result<Self> {
        check_db_path(path)?;
        precreate_private_file(path)
            .map_err(|e| io_error(e, format!("cannot create key store {}", path.display())))?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let sql = |what: &str| {
            let what = what.to_owned();
            move |e| sql_error(path, &what, e)
        };
        let mut conn = Connection::open_with_flags(path, flags).map_err(sql("cannot open"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("cannot configure"))?;
        let wal = enable_wal(&conn, path)?.then(|| companion(path, "-wal"));
        // The page cache: see CACHE_KIB. Checkpoints every 64 MiB of WAL instead of 4 MiB: a
        // key's random pages are rewritten by many commits, and a checkpoint copies each page
        // once however often it changed (profiled: checkpoints were 13% of a 1M-row job's CPU);
        // the store checkpoints when it closes.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA cache_size = -{CACHE_KIB}; \
             PRAGMA wal_autocheckpoint = 16384;"
        ))
        .map_err(sql("cannot configure"))?;

        let initialised = has_meta(&conn).map_err(sql("cannot read"))?;
        let master = match master_key {
            MasterKeySource::Key(key) => key,
            MasterKeySource::File(file) => load_or_create_key_file(&file, path, initialised)?,
        };
        let wrap = Aes256Gcm::new_from_slice(master.expose().as_slice())
            .map_err(|_| Error::crypto("the master key has the wrong length"))?;
        let mut ciphers = Ciphers::one(&master, VERIFIER_LABEL);

        let secret = {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("cannot start a transaction"))?;
            let existed = has_meta(&tx).map_err(sql("cannot read"))?;
            let secret = if existed {
                unlock_existing(&tx, path, &master, &wrap)?
            } else {
                initialise(&tx, path, &master, &wrap)?
            };
            migrate(&tx, path, &master, existed)?;
            if let Some(next) = pending_rotation(&tx, path, &wrap)? {
                ciphers
                    .by_fp
                    .insert(master_key_fingerprint(&next), next.cipher());
            }
            tx.commit().map_err(sql("cannot commit"))?;
            secret
        };
        let lookup = LookupKey::new(secret.as_slice())?;
        tracing::debug!(path = %path.display(), "opened the embedded key store");
        Ok(EmbeddedKeyStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                conn: Mutex::new(conn),
                ciphers: std::sync::RwLock::new(ciphers),
                lookup,
                log: Mutex::new(LogIndex::default()),
                fold_at: LOG_FOLD_AT,
                fingerprint_mask: u64::MAX,
                wal,
            }),
        })
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!(
                        "key store {}: the database task failed: {e}",
                        self.inner.path.display()
                    ),
                )
            })?
    }
}

/// How [`Inner::checkpoint`] copies the WAL.
#[derive(Debug, Clone, Copy)]
enum Checkpoint {
    /// What no reader holds back, without waiting.
    Passive,
    /// Everything, waiting for readers, and the WAL file emptied.
    Truncate,
}

/// SQLite's companion file of the database at `path` (`-wal`, `-shm`, `-journal`): the path
/// with the suffix appended, byte for byte (a path need not be UTF-8).
fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Sets a connection's `PRAGMA name = value` (outside a transaction, for `synchronous`).
fn set_pragma(
    conn: &Connection,
    name: &str,
    value: impl std::fmt::Display,
) -> rusqlite::Result<()> {
    conn.execute_batch(&format!("PRAGMA {name} = {value};"))
}

/// Switches the database to WAL mode (which the file then keeps). Changing the journal mode needs
/// an exclusive lock, and SQLite returns `SQLITE_BUSY` without calling the busy handler when several
/// connections set up a new file at the same moment, so this retries until [`BUSY_TIMEOUT`].
/// Returns whether the database is in WAL mode (else it uses the rollback journal).
fn enable_wal(conn: &Connection, path: &Path) -> Result<bool> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        let mode = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get::<_, String>(0))
            .and_then(|mode| {
                if mode.eq_ignore_ascii_case("wal") {
                    Ok(mode)
                } else {
                    conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
                }
            });
        match mode {
            Ok(mode) => {
                let wal = mode.eq_ignore_ascii_case("wal");
                if !wal {
                    tracing::warn!(
                        path = %path.display(),
                        journal_mode = %mode,
                        "the key store's file system does not support WAL mode; using the \
                         rollback journal (still durable, slower)"
                    );
                }
                return Ok(wal);
            }
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(sql_error(path, "cannot switch to WAL mode", e)),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn has_meta(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Creates the schema and the store secret in the open transaction.
fn initialise(
    conn: &Connection,
    path: &Path,
    master: &MasterKey,
    wrap: &Aes256Gcm,
) -> Result<Zeroizing<[u8; HASH_LEN]>> {
    let other_tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
            [],
            |row| row.get(0),
        )
        .map_err(|e| sql_error(path, "cannot read", e))?;
    if other_tables > 0 {
        return Err(Error::key_store(format!(
            "{} is a SQLite database but not a keylink key store",
            path.display()
        )));
    }
    let mut secret = Zeroizing::new([0u8; HASH_LEN]);
    fill_random(secret.as_mut())?;
    let wrapped = seal(wrap, secret.as_slice(), STORE_SECRET_AAD)?;
    let verifier = master_key_verifier(master, VERIFIER_LABEL)
        .finalize()
        .into_bytes();
    let err = |e| sql_error(path, "cannot create the schema", e);
    conn.execute_batch(SCHEMA).map_err(err)?;
    let mut put = conn
        .prepare("INSERT INTO meta (name, value) VALUES (?1, ?2)")
        .map_err(err)?;
    // version 1's schema; `migrate` brings it up to date in the same transaction
    put.execute(rusqlite::params!["schema_version", 1i64])
        .map_err(err)?;
    put.execute(rusqlite::params!["created_at_ms", now_ms()])
        .map_err(err)?;
    put.execute(rusqlite::params![
        "master_key_verifier",
        verifier.as_slice()
    ])
    .map_err(err)?;
    put.execute(rusqlite::params!["store_secret", wrapped])
        .map_err(err)?;
    Ok(secret)
}

/// Checks the schema version and the master key, and unwraps the store secret.
fn unlock_existing(
    conn: &Connection,
    path: &Path,
    master: &MasterKey,
    wrap: &Aes256Gcm,
) -> Result<Zeroizing<[u8; HASH_LEN]>> {
    let get = |name: &str| -> Result<Option<rusqlite::types::Value>> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
            row.get(0)
        })
        .optional()
        .map_err(|e| sql_error(path, "cannot read the meta table", e))
    };
    let corrupt = |what: &str| {
        Error::key_store(format!(
            "key store {} is damaged: {what} is missing or malformed",
            path.display()
        ))
    };
    use rusqlite::types::Value;
    let version = match get("schema_version")? {
        Some(Value::Integer(v)) => v,
        _ => return Err(corrupt("the schema version")),
    };
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(Error::key_store(format!(
            "key store {} has schema version {version}; this keylink reads versions 1 to \
             {SCHEMA_VERSION}",
            path.display()
        )));
    }
    let verifier = match get("master_key_verifier")? {
        Some(Value::Blob(v)) => v,
        _ => return Err(corrupt("the master key verifier")),
    };
    if master_key_verifier(master, VERIFIER_LABEL)
        .verify_slice(&verifier)
        .is_err()
    {
        return Err(Error::key_store(format!(
            "the master key does not match key store {}",
            path.display()
        )));
    }
    let wrapped = match get("store_secret")? {
        Some(Value::Blob(v)) => v,
        _ => return Err(corrupt("the store secret")),
    };
    let plain = unseal(wrap, &wrapped, STORE_SECRET_AAD).ok_or_else(|| {
        Error::key_store(format!(
            "key store {} is damaged: the store secret does not decrypt under its master key",
            path.display()
        ))
    })?;
    let secret: [u8; HASH_LEN] = plain
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("the store secret"))?;
    Ok(Zeroizing::new(secret))
}

/// Brings the schema up to [`SCHEMA_VERSION`], in the open transaction, after the master key was
/// verified. Each step is one version; a store is never left between two. A new store (not
/// `existed`) is made at version 1 and brought up the same way, without saying so in the log.
fn migrate(conn: &Connection, path: &Path, master: &MasterKey, existed: bool) -> Result<()> {
    let err = |e| sql_error(path, "cannot migrate the schema", e);
    let version: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if version < 2 {
        conn.execute_batch(MIGRATION_2).map_err(err)?;
        conn.execute(
            "UPDATE keys SET master_fp = ?1",
            [master_key_fingerprint(master)],
        )
        .map_err(err)?;
        conn.execute(
            "UPDATE meta SET value = 2 WHERE name = 'schema_version'",
            [],
        )
        .map_err(err)?;
        if existed {
            tracing::info!(path = %path.display(), "migrated the key store to schema version 2");
        }
    }
    if version < 3 {
        conn.execute_batch(MIGRATION_3).map_err(err)?;
        conn.execute(
            "UPDATE meta SET value = 3 WHERE name = 'schema_version'",
            [],
        )
        .map_err(err)?;
        if existed {
            tracing::info!(path = %path.display(), "migrated the key store to schema version 3");
        }
    }
    if version < 4 {
        conn.execute_batch(MIGRATION_4).map_err(err)?;
        conn.execute(
            "UPDATE meta SET value = 4 WHERE name = 'schema_version'",
            [],
        )
        .map_err(err)?;
        if existed {
            tracing::info!(path = %path.display(), "migrated the key store to schema version 4");
        }
    }
    if !existed {
        // a new store: no key, so no window (a store made before has none until it folds)
        set_folded_max_window(conn, i64::MIN).map_err(err)?;
    }
    Ok(())
}

/// Records `bound` as the bound of the windows in `keys` under the current `log_generation`
/// (module docs, "Key log").
fn set_folded_max_window(conn: &Connection, bound: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES ('folded_max_window', ?1), \
         ('folded_max_window_generation', \
          (SELECT value FROM meta WHERE name = 'log_generation'))",
        [bound],
    )
    .map(|_| ())
}

/// The next master key of a rotation that began and did not finish, sealed under `wrap`.
fn pending_rotation(conn: &Connection, path: &Path, wrap: &Aes256Gcm) -> Result<Option<MasterKey>> {
    let sealed: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'rotation_next_key'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_error(path, "cannot read the meta table", e))?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let plain = unseal(wrap, &sealed, NEXT_MASTER_AAD).ok_or_else(|| {
        Error::key_store(format!(
            "key store {} is damaged: the next master key of a pending rotation does not decrypt",
            path.display()
        ))
    })?;
    let bytes: [u8; MASTER_KEY_LEN] = plain.as_slice().try_into().map_err(|_| {
        Error::key_store(format!(
            "key store {} is damaged: the next master key is malformed",
            path.display()
        ))
    })?;
    Ok(Some(MasterKey::from_bytes(bytes)))
}

/// Reads the master key file, or creates it when the store is new.
fn load_or_create_key_file(file: &Path, db: &Path, initialised: bool) -> Result<MasterKey> {
    let what = format!("the master key file {}", file.display());
    let text = match read_key_file(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if initialised {
                return Err(Error::config(format!(
                    "{what} does not exist, but key store {} already holds keys: restore the \
                     master key file or set {MASTER_KEY_ENV}",
                    db.display()
                )));
            }
            match create_key_file(file)? {
                Some(key) => {
                    tracing::warn!(
                        master_key_file = %file.display(),
                        key_store = %db.display(),
                        "created a new master key for the key store; back the file up and keep \
                         it secret: losing it loses every key in the store, and with them every \
                         record encrypted under them"
                    );
                    return Ok(key);
                }
                // Another process created it first: use theirs.
                None => {
                    read_key_file(file).map_err(|e| io_error(e, format!("cannot read {what}")))?
                }
            }
        }
        Err(e) => return Err(io_error(e, format!("cannot read {what}"))),
    };
    warn_if_readable_by_others(file);
    MasterKey::from_base64(&text, &what)
}

fn read_key_file(file: &Path) -> io::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    fs::File::open(file)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(file)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            master_key_file = %file.display(),
            "the master key file is accessible to other users; restrict it with chmod 600"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &Path) {}

/// Opens `path` for writing, creating it with mode 0600 (on Unix) only if it does not exist.
fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates the database file with mode 0600 so SQLite's files (which copy its mode) are private.
fn precreate_private_file(path: &Path) -> io::Result<()> {
    match create_private(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a new random key to `file`, atomically and without replacing an existing file: the key
/// goes to a private temporary file that is then hard-linked into place. `None` if `file` appeared
/// meanwhile.
fn create_key_file(file: &Path) -> Result<Option<MasterKey>> {
    let what = format!("cannot create the master key file {}", file.display());
    let key = MasterKey::generate()?;
    let text = Zeroizing::new(format!("{}\n", BASE64.encode(key.expose().as_slice())));
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut suffix = [0u8; 8];
    fill_random(&mut suffix)?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file.file_name().unwrap_or_default());
    tmp_name.push(format!(".tmp-{:016x}", u64::from_ne_bytes(suffix)));
    let tmp = dir.join(tmp_name);

    let write = |path: &Path| -> io::Result<()> {
        let mut f = create_private(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write(&tmp).map_err(|e| io_error(e, what.clone()))?;
    let linked = fs::hard_link(&tmp, file);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        // No hard links on this file system: create the file in place (still exclusive).
        Err(_) => match write(file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(io_error(e, what)),
        },
    }
    sync_dir(&dir).map_err(|e| io_error(e, what))?;
    Ok(Some(key))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Associated data of a sealed group name.
fn group_aad(hash: &LookupHash) -> Vec<u8> {
    let mut aad = GROUP_NAME_AAD.to_vec();
    aad.extend_from_slice(hash);
    aad
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn sql_error(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    let kind = if is_busy(&e) {
        ErrorKind::Transient
    } else {
        ErrorKind::KeyStore
    };
    Error::new(kind, format!("key store {}: {what}: {e}", path.display()))
}

fn io_error(e: io::Error, what: String) -> Error {
    let kind = Error::from(io::Error::from(e.kind())).kind();
    Error::new(kind, format!("{what}: {e}"))
}

type ScopeId = (LookupHash, i64);

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled it back.
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        conn
    }

    fn sql(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| sql_error(&self.path, what, e)
    }

    fn lock_log(&self) -> MutexGuard<'_, LogIndex> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection, with the key log folded into the indexed tables first: every operation
    /// but [`Inner::get_or_create`] reads the indexed tables only.
    fn lock_folded(&self) -> Result<MutexGuard<'_, Connection>> {
        let mut conn = self.lock();
        // checked before a write transaction is opened: reads of a folded store take none
        if self.log_pending(&conn)? {
            self.fold_log_alone(&mut conn, &mut self.lock_log())?;
        }
        Ok(conn)
    }

    /// Whether the key log holds rows.
    fn log_pending(&self, conn: &Connection) -> Result<bool> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM logged_keys) OR EXISTS (SELECT 1 FROM logged_links)",
            [],
            |r| r.get(0),
        )
        .map_err(self.sql("cannot read the key log"))
    }

    /// [`Self::fold_log`] in a write transaction of its own.
    fn fold_log_alone(&self, conn: &mut Connection, log: &mut LogIndex) -> Result<()> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("cannot start a write transaction"))?;
        self.fold_log(&tx, log)?;
        tx.commit().map_err(self.sql("cannot fold the key log"))
    }

    /// In a write transaction: moves the key log into the indexed tables, in scope order (so the
    /// scope index is filled from one end), and bumps `log_generation`. The log index is emptied
    /// too; it is read again by the next transaction that uses it (also if this one rolls back).
    /// Operations that delete or re-wrap keys call it inside their own transaction, so a key
    /// another process just logged cannot escape them. An empty log is left alone: the
    /// generation stays, so other handles keep their index (a forget, a purge or each batch of a
    /// rotation used to make every handle read its log again).
    fn fold_log(&self, tx: &Connection, log: &mut LogIndex) -> Result<()> {
        if !self.log_pending(tx)? {
            return Ok(());
        }
        // in the store's page cache (CACHE_KIB), which bounds the memory a fold takes
        let started = std::time::Instant::now();
        let entries = (log.keys.len(), log.links.len());
        // the keys in scope order, then their links in link order (see MIGRATION_4)
        let fold = || -> rusqlite::Result<()> {
            // the bound of the windows in `keys` once the log is in: the log's latest and the
            // bound so far, or when it is not known (a store folded by an older keylink last)
            // the latest in `keys`, read once (a scan of the table)
            let bound: i64 = tx.query_row(
                "SELECT max(coalesce((SELECT max(window_start_ms) FROM logged_keys), ?1), \
                 CASE WHEN (SELECT value FROM meta WHERE name = 'folded_max_window_generation') \
                 = (SELECT value FROM meta WHERE name = 'log_generation') \
                 THEN (SELECT value FROM meta WHERE name = 'folded_max_window') \
                 ELSE coalesce((SELECT max(window_start_ms) FROM keys), ?1) END)",
                [i64::MIN],
                |r| r.get(0),
            )?;
            let last: i64 =
                tx.query_row("SELECT coalesce(max(id), 0) FROM keys", [], |r| r.get(0))?;
            tx.execute_batch(
                "INSERT INTO keys (key_link, scope_hash, window_start_ms, key_id, expires_at_ms, \
                 wrapped_key, created_at_ms, group_hash, policy_id, master_fp) \
                 SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms, \
                 wrapped_key, created_at_ms, group_hash, policy_id, master_fp FROM logged_keys \
                 ORDER BY scope_hash, window_start_ms;",
            )?;
            tx.execute(
                "INSERT INTO key_links (key_link, key_row) SELECT key_link, id FROM keys \
                 WHERE id > ?1 ORDER BY key_link",
                [last],
            )?;
            tx.execute_batch(
                "INSERT OR IGNORE INTO subject_keys (subject_hash, key_link) \
                 SELECT subject_hash, key_link FROM logged_links ORDER BY subject_hash, key_link; \
                 DELETE FROM logged_keys; \
                 DELETE FROM logged_links; \
                 UPDATE meta SET value = value + 1 WHERE name = 'log_generation';",
            )?;
            set_folded_max_window(tx, bound)
        };
        fold().map_err(self.sql("cannot fold the key log into the key tables"))?;
        tracing::debug!(path = %self.path.display(), keys = entries.0, links = entries.1,
            ms = started.elapsed().as_millis() as u64, "folded the key log into the key tables");
        *log = LogIndex::default();
        Ok(())
    }

    /// Hands each row of a log table after id `seen` to `add` (`sql` selects the id and two
    /// columns, in id order); returns the highest id read.
    fn read_log<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
        &self,
        conn: &Connection,
        sql: &str,
        seen: i64,
        mut add: impl FnMut(i64, A, B),
    ) -> Result<i64> {
        let err = self.sql("cannot read the key log");
        let mut st = conn.prepare_cached(sql).map_err(&err)?;
        let mut rows = st.query([seen]).map_err(&err)?;
        let mut last = seen;
        while let Some(r) = rows.next().map_err(&err)? {
            last = r.get(0).map_err(&err)?;
            add(last, r.get(1).map_err(&err)?, r.get(2).map_err(&err)?);
        }
        Ok(last)
    }

    /// Brings `log` up to the snapshot of the transaction `conn` is in.
    fn sync_log(&self, conn: &Connection, log: &mut LogIndex) -> Result<()> {
        let err = self.sql("cannot read the key log");
        let generation: i64 = conn
            .prepare_cached("SELECT value FROM meta WHERE name = 'log_generation'")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(&err)?;
        if log.generation != Some(generation) {
            let folded_max_window = conn
                .prepare_cached(
                    "SELECT b.value FROM meta b, meta g WHERE b.name = 'folded_max_window' \
                     AND g.name = 'folded_max_window_generation' AND g.value = ?1",
                )
                .and_then(|mut st| st.query_row([generation], |r| r.get(0)).optional())
                .map_err(&err)?;
            *log = LogIndex {
                generation: Some(generation),
                folded_max_window,
                ..LogIndex::default()
            };
        }
        let mask = self.fingerprint_mask;
        let LogIndex {
            keys,
            links,
            keys_seen,
            links_seen,
            ..
        } = log;
        *keys_seen = self.read_log(
            conn,
            "SELECT id, scope_hash, window_start_ms FROM logged_keys WHERE id > ?1 ORDER BY id",
            *keys_seen,
            |id, scope, window| {
                keys.insert(scope_fingerprint(&(scope, window)) & mask, id);
            },
        )?;
        *links_seen = self.read_log(
            conn,
            "SELECT id, subject_hash, key_link FROM logged_links WHERE id > ?1 ORDER BY id",
            *links_seen,
            |id, subject, link| {
                links.insert(link_fingerprint(&subject, &link) & mask, id);
            },
        )?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn unwrap_key(
        &self,
        key_link: Uuid,
        scope: &LookupHash,
        window_start_ms: i64,
        key_id: i64,
        expires_at_ms: i64,
        wrapped: &[u8],
        master_fp: Option<i64>,
    ) -> Result<DataKey> {
        let damaged = || {
            Error::key_store(format!(
                "key store {}: the key {key_link} cannot be decrypted (its row was altered or is \
                 damaged)",
                self.path.display()
            ))
        };
        let key_id = u32::try_from(key_id).map_err(|_| damaged())?;
        let aad = data_key_aad(DATA_KEY_AAD, &key_link, scope, window_start_ms, key_id);
        let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
        // Reads go by the fingerprint of the master key the row says wraps it: during a
        // rotation some rows are under the old key and some under the new one.
        let cipher = match master_fp {
            Some(fp) => ciphers.by_fp.get(&fp).ok_or_else(|| {
                Error::key_store(format!(
                    "key store {}: the key {key_link} is wrapped under another master key than \
                     this process holds (a rotation finished meanwhile? restart with the new key)",
                    self.path.display()
                ))
            })?,
            None => ciphers.current().1,
        };
        let plain = unseal(cipher, wrapped, &aad).ok_or_else(damaged)?;
        let material = KeyMaterial::from_slice(&plain).map_err(|_| damaged())?;
        Ok(DataKey {
            key_link,
            key_id,
            material,
            window_start_ms,
            expires_at_ms,
        })
    }

    /// The key of one scope, if it exists, in the log (`log`, synced with `conn`'s snapshot) or
    /// the indexed table. `known` caches keys already decrypted in this call.
    fn find_scope(
        &self,
        conn: &Connection,
        log: &LogIndex,
        id: &ScopeId,
        known: &mut HashMap<Uuid, Arc<DataKey>, FastHash>,
    ) -> Result<Option<Arc<DataKey>>> {
        type Row = ([u8; 16], i64, i64, Vec<u8>, Option<i64>);
        let get = |row: &rusqlite::Row| -> rusqlite::Result<(Row, LookupHash, i64)> {
            Ok((
                (
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ),
                row.get(5)?,
                row.get(6)?,
            ))
        };
        macro_rules! select {
            ($rest:literal) => {
                concat!(
                    "SELECT key_link, key_id, expires_at_ms, wrapped_key, master_fp, scope_hash, \
                     window_start_ms FROM ",
                    $rest
                )
            };
        }
        let err = self.sql("cannot read keys");
        let mut row = None;
        if let Some(log_id) = log
            .keys
            .get(&(scope_fingerprint(id) & self.fingerprint_mask))
        {
            let found = conn
                .prepare_cached(select!("logged_keys WHERE id = ?1"))
                .and_then(|mut st| st.query_row([log_id], get).optional())
                .map_err(&err)?;
            row = match found {
                Some((row, scope, window)) if (scope, window) == *id => Some(row),
                // another scope with the same fingerprint: search the log (rare)
                _ => conn
                    .prepare_cached(select!(
                        "logged_keys WHERE scope_hash = ?1 AND window_start_ms = ?2"
                    ))
                    .and_then(|mut st| st.query_row(rusqlite::params![id.0, id.1], get).optional())
                    .map_err(&err)?
                    .map(|(row, _, _)| row),
            };
        }
        // no key in `keys` has a later window than the bound (module docs, "Key log")
        if row.is_none() && log.folded_max_window.is_none_or(|bound| id.1 <= bound) {
            row = conn
                .prepare_cached(select!(
                    "keys WHERE scope_hash = ?1 AND window_start_ms = ?2"
                ))
                .and_then(|mut st| st.query_row(rusqlite::params![id.0, id.1], get).optional())
                .map_err(&err)?
                .map(|(row, _, _)| row);
        }
        let Some((link, key_id, expires_at_ms, wrapped, fp)) = row else {
            return Ok(None);
        };
        let link = Uuid::from_bytes(link);
        if let Some(key) = known.get(&link) {
            return Ok(Some(Arc::clone(key)));
        }
        let key =
            Arc::new(self.unwrap_key(link, &id.0, id.1, key_id, expires_at_ms, &wrapped, fp)?);
        known.insert(link, Arc::clone(&key));
        Ok(Some(key))
    }

    fn has_link(
        &self,
        conn: &Connection,
        log: &LogIndex,
        subject: &LookupHash,
        link: &Uuid,
    ) -> Result<bool> {
        if let Some(log_id) = log
            .links
            .get(&(link_fingerprint(subject, link.as_bytes()) & self.fingerprint_mask))
        {
            let err = self.sql("cannot read subject links");
            let row: Option<(LookupHash, [u8; 16])> = conn
                .prepare_cached("SELECT subject_hash, key_link FROM logged_links WHERE id = ?1")
                .and_then(|mut st| {
                    st.query_row([log_id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(&err)?;
            if row == Some((*subject, *link.as_bytes())) {
                return Ok(true);
            }
            // another link with the same fingerprint: search the log (rare)
            let logged = conn
                .prepare_cached(
                    "SELECT 1 FROM logged_links WHERE subject_hash = ?1 AND key_link = ?2",
                )
                .and_then(|mut st| st.exists(rusqlite::params![subject, link.as_bytes()]))
                .map_err(&err)?;
            if logged {
                return Ok(true);
            }
        }
        let mut stmt = conn
            .prepare_cached("SELECT 1 FROM subject_keys WHERE subject_hash = ?1 AND key_link = ?2")
            .map_err(self.sql("cannot read subject links"))?;
        stmt.exists(rusqlite::params![subject, link.as_bytes()])
            .map_err(self.sql("cannot read subject links"))
    }

    /// Logs a new key for `scope` with `insert` (the `logged_keys` insert, prepared on `conn`);
    /// returns it with its `logged_keys` id. `groups` caches the group hashes stored in this
    /// transaction.
    fn create_key(
        &self,
        conn: &Connection,
        insert: &mut rusqlite::Statement<'_>,
        scope: &ScopeRequest,
        random: &mut RandomPool,
        groups: &mut HashMap<String, LookupHash>,
    ) -> Result<(Arc<DataKey>, i64)> {
        let material = KeyMaterial::from_slice(random.take(KEY_LEN)?)?;
        let key_id = loop {
            let b = random.take(4)?;
            let id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
            if id != 0 {
                break id;
            }
        };
        let key_link =
            uuid::Builder::from_random_bytes(random.take(16)?.try_into().expect("took 16 bytes"))
                .into_uuid();
        let aad = data_key_aad(
            DATA_KEY_AAD,
            &key_link,
            scope.scope.as_bytes(),
            scope.window_start_ms,
            key_id,
        );
        let (fp, wrapped) = {
            let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
            let (fp, cipher) = ciphers.current();
            (fp, seal_with(cipher, material.expose(), &aad, random)?)
        };
        let group = match groups.get(scope.labels.group.as_str()) {
            Some(g) => *g,
            None => {
                let g = self.ensure_group(conn, &scope.labels.group)?;
                groups.insert(scope.labels.group.clone(), g);
                g
            }
        };
        insert
            .execute(rusqlite::params![
                key_link.as_bytes(),
                scope.scope.as_bytes(),
                scope.window_start_ms,
                i64::from(key_id),
                scope.expires_at_ms,
                wrapped,
                now_ms(),
                group,
                scope.labels.policy_id,
                fp,
            ])
            .map_err(self.sql("cannot store a new key"))?;
        let log_id = conn.last_insert_rowid();
        let key = Arc::new(DataKey {
            key_link,
            key_id,
            material,
            window_start_ms: scope.window_start_ms,
            expires_at_ms: scope.expires_at_ms,
        });
        Ok((key, log_id))
    }

    fn get_or_create(&self, scopes: &[ScopeRequest]) -> Result<Vec<ResolvedKey>> {
        let mut conn = self.lock();
        let mut log = self.lock_log();
        let mut known: HashMap<Uuid, Arc<DataKey>, FastHash> = HashMap::default();
        let mut found: HashMap<ScopeId, Arc<DataKey>, FastHash> =
            HashMap::with_capacity_and_hasher(scopes.len(), FastHash::default());

        // Phase 1: a read snapshot; no write lock, no fsync when everything exists.
        let mut must_write = false;
        {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(self.sql("cannot start a transaction"))?;
            self.sync_log(&tx, &mut log)?;
            for s in scopes {
                let id = (*s.scope.as_bytes(), s.window_start_ms);
                let key = match found.get(&id) {
                    Some(key) => Some(Arc::clone(key)),
                    None => {
                        let key = self.find_scope(&tx, &log, &id, &mut known)?;
                        if let Some(key) = &key {
                            found.insert(id, Arc::clone(key));
                        }
                        key
                    }
                };
                must_write = match (&key, &s.subject) {
                    (None, _) => true,
                    (Some(key), Some(subject)) => {
                        !self.has_link(&tx, &log, subject.as_bytes(), &key.key_link)?
                    }
                    (Some(_), None) => false,
                };
                if must_write {
                    break;
                }
            }
        }

        // Phase 2: one IMMEDIATE transaction that re-resolves everything (another writer may have
        // created or deleted keys since the snapshot), logs the keys and subject links missing,
        // and commits: the keys are committed before they are returned.
        let mut created: HashSet<ScopeId, FastHash> = HashSet::default();
        if must_write {
            found.clear();
            // Committed without waiting for the disk: the keys are in the WAL, safe from a
            // crash of the process, and `sync` (which the engine calls before it writes
            // anything encrypted with them) flushes the WAL beside the next transactions.
            // Measured at 1M rows, 95k keys (A p2, medians of interleaved runs): ~1.52 s with
            // an fsync in every key transaction (the store is the job's serial path), ~1.45 s
            // with this, ~1.38 s with no fsync at all (not an option).
            // (Only in WAL mode: with the rollback journal, NORMAL would not keep the commit.)
            if self.wal.is_some() {
                set_pragma(&conn, "synchronous", "NORMAL").map_err(self.sql("cannot configure"))?;
            }
            let logged = self.log_new_keys(&mut conn, &mut log, scopes, &mut found, &mut created);
            let restored =
                set_pragma(&conn, "synchronous", "FULL").map_err(self.sql("cannot configure"));
            let (logged_keys, logged_links) = logged?;
            restored?;
            // The transaction read the log up to its first row (sync_log, under the write lock)
            // and its rows are the newest: they join the index without being read back.
            for (fingerprint, log_id) in logged_keys {
                log.keys.insert(fingerprint & self.fingerprint_mask, log_id);
                log.keys_seen = log.keys_seen.max(log_id);
            }
            for (fingerprint, log_id) in logged_links {
                log.links
                    .insert(fingerprint & self.fingerprint_mask, log_id);
                log.links_seen = log.links_seen.max(log_id);
            }
            // subject links too: a key may gain links long after it was made
            if log.keys.len().max(log.links.len()) >= self.fold_at {
                // the keys are committed: a failed fold loses nothing, the next call retries
                if let Err(e) = self.fold_log_alone(&mut conn, &mut log) {
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "could not fold the key log into the key tables; will retry");
                }
            }
        }
        drop(log);
        let tombstoned = self.tombstoned(&conn, found.keys())?;
        drop(conn);

        Ok(scopes
            .iter()
            .map(|s| {
                let id = (*s.scope.as_bytes(), s.window_start_ms);
                ResolvedKey {
                    key: Arc::clone(&found[&id]),
                    // `remove`: only the first request of a duplicated scope reports `created`.
                    created: created.remove(&id),
                    after_forget: tombstoned.contains(&id),
                }
            })
            .collect())
    }

    /// Phase 2 of [`Self::get_or_create`]: in one IMMEDIATE transaction, re-resolves every scope
    /// into `found`, logs the keys (into `created`) and subject links missing, and commits.
    /// Returns the (fingerprint, log id) of the keys and links it logged.
    #[allow(clippy::type_complexity)]
    fn log_new_keys(
        &self,
        conn: &mut Connection,
        log: &mut LogIndex,
        scopes: &[ScopeRequest],
        found: &mut HashMap<ScopeId, Arc<DataKey>, FastHash>,
        created: &mut HashSet<ScopeId, FastHash>,
    ) -> Result<(Vec<(u64, i64)>, Vec<(u64, i64)>)> {
        let mut known: HashMap<Uuid, Arc<DataKey>, FastHash> = HashMap::default();
        let mut random = RandomPool::new();
        let mut groups = HashMap::new();
        let mut linked: HashSet<(LookupHash, Uuid), FastHash> = HashSet::default();
        // what this transaction logs, for the log index once it commits
        let mut logged_keys: Vec<(u64, i64)> = Vec::new();
        let mut logged_links: Vec<(u64, i64)> = Vec::new();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("cannot start a write transaction"))?;
        self.check_master_current(&tx)?;
        self.sync_log(&tx, log)?;
        // prepared once for the whole call, not looked up in the statement cache for each key
        // (that was ~0.9 % of a whole job's CPU, `perf` at 1M rows, 95k new keys)
        let mut insert_key = tx
            .prepare_cached(
                "INSERT INTO logged_keys (key_link, scope_hash, window_start_ms, key_id, \
                 expires_at_ms, wrapped_key, created_at_ms, group_hash, policy_id, master_fp) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(self.sql("cannot store a new key"))?;
        let mut insert_link = tx
            .prepare_cached("INSERT INTO logged_links (subject_hash, key_link) VALUES (?1, ?2)")
            .map_err(self.sql("cannot store a subject link"))?;
        for s in scopes {
            let id = (*s.scope.as_bytes(), s.window_start_ms);
            // a key made in this transaction has a new random link: no subject has it yet
            let mut new_key = false;
            let key = match found.get(&id) {
                Some(key) => Arc::clone(key),
                None => {
                    let key = match self.find_scope(&tx, log, &id, &mut known)? {
                        Some(key) => key,
                        None => {
                            created.insert(id);
                            new_key = true;
                            let (key, log_id) =
                                self.create_key(&tx, &mut insert_key, s, &mut random, &mut groups)?;
                            logged_keys.push((scope_fingerprint(&id), log_id));
                            key
                        }
                    };
                    found.insert(id, Arc::clone(&key));
                    key
                }
            };
            if let Some(subject) = &s.subject {
                let subject = *subject.as_bytes();
                if !linked.contains(&(subject, key.key_link))
                    && (new_key || !self.has_link(&tx, log, &subject, &key.key_link)?)
                {
                    linked.insert((subject, key.key_link));
                    insert_link
                        .execute(rusqlite::params![subject, key.key_link.as_bytes()])
                        .map_err(self.sql("cannot store a subject link"))?;
                    logged_links.push((
                        link_fingerprint(&subject, key.key_link.as_bytes()),
                        tx.last_insert_rowid(),
                    ));
                }
            }
        }
        drop((insert_key, insert_link));
        tx.commit().map_err(self.sql("cannot commit new keys"))?;
        Ok((logged_keys, logged_links))
    }

    /// Flushes the WAL to disk ([`KeyStore::sync`]): every transaction committed so far, by any
    /// handle, is then durable. It needs no lock: the flush runs beside the next transactions.
    fn sync_wal(&self) -> Result<()> {
        // the rollback journal: every commit was synced
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let flushed = match std::fs::File::open(wal) {
            Ok(file) => file.sync_data(),
            // no WAL: nothing was written since the last checkpoint, which syncs the database
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        flushed.map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "key store {}: cannot flush its WAL: {e}",
                    self.path.display()
                ),
            )
        })
    }

    fn get_by_key_links(&self, links: &[Uuid]) -> Result<Vec<Option<Arc<DataKey>>>> {
        let mut conn = self.lock_folded()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(self.sql("cannot start a transaction"))?;
        let mut stmt = tx
            .prepare_cached(KEY_BY_LINK)
            .map_err(self.sql("cannot read keys"))?;
        let mut known: HashMap<Uuid, Option<Arc<DataKey>>> = HashMap::new();
        let mut out = Vec::with_capacity(links.len());
        for link in links {
            if let Some(key) = known.get(link) {
                out.push(key.clone());
                continue;
            }
            let row = stmt
                .query_row([link.as_bytes()], |row| {
                    Ok((
                        row.get::<_, [u8; HASH_LEN]>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Vec<u8>>(4)?,
                        row.get::<_, Option<i64>>(5)?,
                    ))
                })
                .optional()
                .map_err(self.sql("cannot read keys"))?;
            let key = match row {
                None => None,
                Some((scope, window, key_id, expires, wrapped, fp)) => Some(Arc::new(
                    self.unwrap_key(*link, &scope, window, key_id, expires, &wrapped, fp)?,
                )),
            };
            known.insert(*link, key.clone());
            out.push(key);
        }
        Ok(out)
    }

    fn subject_key_links(&self, subject: &LookupHash) -> Result<Vec<Uuid>> {
        let conn = self.lock_folded()?;
        let mut stmt = conn
            .prepare_cached("SELECT key_link FROM subject_keys WHERE subject_hash = ?1")
            .map_err(self.sql("cannot read subject links"))?;
        let links = stmt
            .query_map([subject], |row| row.get::<_, [u8; 16]>(0))
            .map_err(self.sql("cannot read subject links"))?
            .map(|r| r.map(Uuid::from_bytes))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("cannot read subject links"))?;
        Ok(links)
    }

    /// In a write transaction: fails when another process rotated the master key since this
    /// handle opened the store, so no key is added under a master key the store no longer opens
    /// with (`BEGIN IMMEDIATE` orders this against the rotation's last transaction).
    fn check_master_current(&self, conn: &Connection) -> Result<()> {
        let verifier: Vec<u8> = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'master_key_verifier'",
                [],
                |r| r.get(0),
            )
            .map_err(self.sql("cannot read the meta table"))?;
        let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
        if ciphers.verifier != verifier {
            return Err(Error::key_store(format!(
                "the master key of key store {} was rotated by another process: restart with the \
                 new master key",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// The hash of `group`, storing its sealed name the first time it is seen.
    fn ensure_group(&self, conn: &Connection, group: &str) -> Result<LookupHash> {
        let hash = *self.lookup.group_hash(group).as_bytes();
        let exists = conn
            .prepare_cached("SELECT 1 FROM key_groups WHERE group_hash = ?1")
            .and_then(|mut st| st.exists([&hash]))
            .map_err(self.sql("cannot read key groups"))?;
        if !exists {
            let (fp, sealed) = {
                let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
                let (fp, cipher) = ciphers.current();
                (fp, seal(cipher, group.as_bytes(), &group_aad(&hash))?)
            };
            conn.prepare_cached(
                "INSERT OR IGNORE INTO key_groups (group_hash, sealed_name, master_fp) \
                 VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| st.execute(rusqlite::params![hash, sealed, fp]))
            .map_err(self.sql("cannot store a key group"))?;
        }
        Ok(hash)
    }

    /// Every group's name by hash (groups are few: one per job or pipeline).
    fn group_names(&self, conn: &Connection) -> Result<HashMap<LookupHash, String>> {
        let mut stmt = conn
            .prepare_cached("SELECT group_hash, sealed_name, master_fp FROM key_groups")
            .map_err(self.sql("cannot read key groups"))?;
        let rows: Vec<(LookupHash, Vec<u8>, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.sql("cannot read key groups"))?;
        let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::with_capacity(rows.len());
        for (hash, sealed, fp) in rows {
            let name = ciphers
                .by_fp
                .get(&fp)
                .and_then(|c| unseal(c, &sealed, &group_aad(&hash)))
                .and_then(|p| String::from_utf8(p.to_vec()).ok())
                .ok_or_else(|| {
                    Error::key_store(format!(
                        "key store {}: a key group's name does not decrypt",
                        self.path.display()
                    ))
                })?;
            out.insert(hash, name);
        }
        Ok(out)
    }

    /// The scopes among `ids` that were forgotten before.
    fn tombstoned<'a>(
        &self,
        conn: &Connection,
        ids: impl Iterator<Item = &'a ScopeId>,
    ) -> Result<HashSet<ScopeId>> {
        let mut out = HashSet::new();
        let any: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM tombstones)", [], |r| r.get(0))
            .map_err(self.sql("cannot read tombstones"))?;
        if !any {
            return Ok(out);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT 1 FROM tombstones WHERE scope_hash = ?1 AND window_start_ms = ?2",
            )
            .map_err(self.sql("cannot read tombstones"))?;
        for id in ids {
            if stmt
                .exists(rusqlite::params![id.0, id.1])
                .map_err(self.sql("cannot read tombstones"))?
            {
                out.insert(*id);
            }
        }
        Ok(out)
    }

    fn insert_audit(&self, conn: &Connection, e: &AuditEntry) -> Result<()> {
        let group = match &e.group {
            Some(g) => Some(self.ensure_group(conn, g)?),
            None => None,
        };
        conn.prepare_cached(
            "INSERT INTO audit_log (at_ms, operation, keys, subject_hash, group_hash, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(rusqlite::params![
                e.at_ms,
                e.operation.as_str(),
                i64::try_from(e.keys).unwrap_or(i64::MAX),
                e.subject.map(|s| *s.as_bytes()),
                group,
                e.detail,
            ])
        })
        .map_err(self.sql("cannot append to the audit log"))?;
        Ok(())
    }

    fn append_audit(&self, e: &AuditEntry) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("cannot start a write transaction"))?;
        self.insert_audit(&tx, e)?;
        tx.commit().map_err(self.sql("cannot commit the audit log"))
    }

    fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        let conn = self.lock();
        let names = self.group_names(&conn)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT at_ms, operation, keys, subject_hash, group_hash, detail FROM audit_log \
                 ORDER BY id",
            )
            .map_err(self.sql("cannot read the audit log"))?;
        type Row = (
            i64,
            String,
            i64,
            Option<LookupHash>,
            Option<LookupHash>,
            String,
        );
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.sql("cannot read the audit log"))?;
        rows.into_iter()
            .map(|(at, op, keys, subject, group, detail)| {
                Ok(AuditEntry {
                    at_ms: at,
                    operation: AuditOperation::parse(&op).ok_or_else(|| {
                        Error::key_store(format!(
                            "key store {}: an unknown audit operation {op:?}",
                            self.path.display()
                        ))
                    })?,
                    keys: keys.max(0) as u64,
                    subject: subject.map(SubjectHash::from_bytes),
                    group: group.map(|g| names.get(&g).cloned().unwrap_or_default()),
                    detail,
                })
            })
            .collect()
    }

    fn subject_keys(&self, subject: &LookupHash) -> Result<Vec<KeyInfo>> {
        let conn = self.lock_folded()?;
        let names = self.group_names(&conn)?;
        let mut stmt = conn
            .prepare_cached(SUBJECT_KEYS)
            .map_err(self.sql("cannot read keys"))?;
        type Row = ([u8; 16], i64, i64, i64, Option<LookupHash>, Option<String>);
        let rows: Vec<Row> = stmt
            .query_map([subject], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.sql("cannot read keys"))?;
        Ok(rows
            .into_iter()
            .map(|(link, window, expires, created, group, policy)| KeyInfo {
                key_link: Uuid::from_bytes(link),
                window_start_ms: window,
                expires_at_ms: expires,
                created_at_ms: created,
                group: group.and_then(|g| names.get(&g).cloned()),
                policy_id: policy,
            })
            .collect())
    }

    fn list_subjects(&self) -> Result<Vec<SubjectKeys>> {
        let conn = self.lock_folded()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT subject_hash, count(*) FROM subject_keys GROUP BY subject_hash \
                 ORDER BY subject_hash",
            )
            .map_err(self.sql("cannot read subject links"))?;
        stmt.query_map([], |r| {
            Ok(SubjectKeys {
                subject: SubjectHash::from_bytes(r.get(0)?),
                keys: r.get::<_, i64>(1)?.max(0) as u64,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(self.sql("cannot read subject links"))
    }

    fn key_stats(&self) -> Result<Vec<KeyStats>> {
        let conn = self.lock_folded()?;
        let names = self.group_names(&conn)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT group_hash, window_start_ms, policy_id, count(*), min(expires_at_ms) \
                 FROM keys GROUP BY group_hash, window_start_ms, policy_id",
            )
            .map_err(self.sql("cannot read keys"))?;
        type Row = (Option<LookupHash>, i64, Option<String>, i64, i64);
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.sql("cannot read keys"))?;
        let mut out: Vec<KeyStats> = rows
            .into_iter()
            .map(|(group, window, policy, n, expiry)| KeyStats {
                group: group.and_then(|g| names.get(&g).cloned()),
                window_start_ms: window,
                policy_id: policy,
                keys: n.max(0) as u64,
                earliest_expiry_ms: expiry,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn count_expired(&self, now: i64) -> Result<u64> {
        let conn = self.lock_folded()?;
        conn.query_row(
            "SELECT count(*) FROM keys WHERE expires_at_ms < ?1",
            [now],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n.max(0) as u64)
        .map_err(self.sql("cannot read keys"))
    }

    fn export_keys(&self, group: &LookupHash, since: Option<i64>) -> Result<Vec<ExportedKey>> {
        let mut conn = self.lock_folded()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(self.sql("cannot start a transaction"))?;
        let mut stmt = tx
            .prepare_cached(EXPORT_KEYS)
            .map_err(self.sql("cannot read keys"))?;
        type Row = (
            [u8; 16],
            LookupHash,
            i64,
            i64,
            i64,
            Vec<u8>,
            Option<i64>,
            Option<String>,
            i64,
        );
        let mut rows: Vec<Row> = stmt
            .query_map(rusqlite::params![group, since.unwrap_or(i64::MIN)], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.sql("cannot read keys"))?;
        // oldest first; key links (unique) order keys made in the same millisecond
        rows.sort_unstable_by_key(|r| (r.8, r.0));
        rows.into_iter()
            .map(
                |(link, scope, window, key_id, expires, wrapped, fp, policy, created)| {
                    Ok(ExportedKey {
                        key: Arc::new(self.unwrap_key(
                            Uuid::from_bytes(link),
                            &scope,
                            window,
                            key_id,
                            expires,
                            &wrapped,
                            fp,
                        )?),
                        policy_id: policy.unwrap_or_default(),
                        created_at_ms: created,
                    })
                },
            )
            .collect()
    }

    /// Re-wraps every key under `new`. Crash-safe because every step is one transaction that
    /// leaves the store readable:
    ///
    /// 1. the new key is sealed under the current one into the meta table (with its
    ///    fingerprint): from now on, a handle opened with the current key can read rows under
    ///    either key;
    /// 2. rows are re-wrapped in batches of [`ROTATION_BATCH`], each row's wrapped key and
    ///    `master_fp` changed together, so a row is always fully under one key that its
    ///    fingerprint names; a kill loses one uncommitted batch at most;
    /// 3. one last transaction re-wraps what is left (keys other writers made meanwhile), the
    ///    group names and the store secret, replaces the master key verifier and deletes the
    ///    sealed new key: from its commit on the store opens with the new key only, and nothing
    ///    in it is sealed under the old one.
    ///
    /// A call after an interruption finds the sealed new key (same fingerprint) and resumes; a
    /// call with a different new key while one is pending is refused.
    fn rotate_master(&self, new: &MasterKey) -> Result<RotationReport> {
        let new_fp = master_key_fingerprint(new);
        let new_cipher = new.cipher();
        let mut report = RotationReport::default();
        // Step 1.
        {
            let mut conn = self.lock();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.sql("cannot start a write transaction"))?;
            let verifier: Vec<u8> = tx
                .query_row(
                    "SELECT value FROM meta WHERE name = 'master_key_verifier'",
                    [],
                    |r| r.get(0),
                )
                .map_err(self.sql("cannot read the meta table"))?;
            if master_key_verifier(new, VERIFIER_LABEL)
                .verify_slice(&verifier)
                .is_ok()
            {
                report.already_done = true;
                return Ok(report);
            }
            let pending: Option<i64> = tx
                .query_row(
                    "SELECT value FROM meta WHERE name = 'rotation_next_fp'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.sql("cannot read the meta table"))?;
            match pending {
                Some(fp) if fp == new_fp => report.resumed = true,
                Some(_) => {
                    return Err(Error::key_store(format!(
                        "key store {}: a rotation to another master key began and did not \
                         finish; run it again with that key file to finish it first",
                        self.path.display()
                    )));
                }
                None => {
                    let sealed = {
                        let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
                        seal(
                            ciphers.current().1,
                            new.expose().as_slice(),
                            NEXT_MASTER_AAD,
                        )?
                    };
                    tx.execute(
                        "INSERT INTO meta (name, value) VALUES ('rotation_next_key', ?1), \
                         ('rotation_next_fp', ?2)",
                        rusqlite::params![sealed, new_fp],
                    )
                    .map_err(self.sql("cannot begin the rotation"))?;
                }
            }
            tx.commit().map_err(self.sql("cannot begin the rotation"))?;
            self.ciphers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .by_fp
                .insert(new_fp, new_cipher.clone());
        }
        // Step 2.
        loop {
            let mut conn = self.lock();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.sql("cannot start a write transaction"))?;
            self.fold_log(&tx, &mut self.lock_log())?;
            let n = self.rewrap_batch(&tx, new_fp, &new_cipher)?;
            tx.commit()
                .map_err(self.sql("cannot commit re-wrapped keys"))?;
            report.rewrapped += n;
            if n == 0 {
                break;
            }
        }
        // Step 3.
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("cannot start a write transaction"))?;
        self.fold_log(&tx, &mut self.lock_log())?;
        loop {
            let n = self.rewrap_batch(&tx, new_fp, &new_cipher)?;
            report.rewrapped += n;
            if n == 0 {
                break;
            }
        }
        let names = self.group_names(&tx)?;
        for (hash, name) in &names {
            let sealed = seal(&new_cipher, name.as_bytes(), &group_aad(hash))?;
            tx.execute(
                "UPDATE key_groups SET sealed_name = ?1, master_fp = ?2 WHERE group_hash = ?3",
                rusqlite::params![sealed, new_fp, hash],
            )
            .map_err(self.sql("cannot re-wrap key groups"))?;
        }
        let secret = Zeroizing::new(self.store_secret(&tx)?);
        let wrapped_secret = seal(&new_cipher, secret.as_slice(), STORE_SECRET_AAD)?;
        let verifier = master_key_verifier(new, VERIFIER_LABEL)
            .finalize()
            .into_bytes();
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'store_secret'",
            [wrapped_secret],
        )
        .and_then(|_| {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE name = 'master_key_verifier'",
                [verifier.as_slice()],
            )
        })
        .and_then(|_| {
            tx.execute(
                "DELETE FROM meta WHERE name IN ('rotation_next_key', 'rotation_next_fp')",
                [],
            )
        })
        .map_err(self.sql("cannot finish the rotation"))?;
        let total: i64 = tx
            .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
            .map_err(self.sql("cannot read keys"))?;
        self.insert_audit(
            &tx,
            &AuditEntry {
                at_ms: now_ms(),
                operation: AuditOperation::Rotated,
                keys: total.max(0) as u64,
                subject: None,
                group: None,
                detail: if report.resumed {
                    "resumed an interrupted rotation".into()
                } else {
                    String::new()
                },
            },
        )?;
        tx.commit()
            .map_err(self.sql("cannot finish the rotation"))?;
        {
            let mut ciphers = self.ciphers.write().unwrap_or_else(|e| e.into_inner());
            ciphers.by_fp.retain(|fp, _| *fp == new_fp);
            ciphers.current = new_fp;
            ciphers.verifier = verifier.to_vec();
        }
        // the old wrapped values leave the WAL file too
        self.checkpoint(&conn, Checkpoint::Truncate);
        Ok(report)
    }

    /// Re-wraps up to [`ROTATION_BATCH`] keys not yet under `new_fp`; returns how many.
    fn rewrap_batch(&self, tx: &Connection, new_fp: i64, new: &Aes256Gcm) -> Result<u64> {
        let mut stmt = tx
            .prepare_cached(
                "SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms, \
                 wrapped_key, master_fp FROM keys WHERE master_fp IS NOT ?1 LIMIT ?2",
            )
            .map_err(self.sql("cannot read keys"))?;
        type Row = ([u8; 16], LookupHash, i64, i64, i64, Vec<u8>, Option<i64>);
        let rows: Vec<Row> = stmt
            .query_map(rusqlite::params![new_fp, ROTATION_BATCH as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.sql("cannot read keys"))?;
        let mut update = tx
            .prepare_cached(REWRAP_KEY)
            .map_err(self.sql("cannot re-wrap keys"))?;
        let mut random = RandomPool::new();
        for (link, scope, window, key_id, expires, wrapped, fp) in &rows {
            let link = Uuid::from_bytes(*link);
            let key = self.unwrap_key(link, scope, *window, *key_id, *expires, wrapped, *fp)?;
            let aad = data_key_aad(DATA_KEY_AAD, &link, scope, *window, key.key_id);
            let rewrapped = seal_with(new, key.material.expose(), &aad, &mut random)?;
            update
                .execute(rusqlite::params![rewrapped, new_fp, link.as_bytes()])
                .map_err(self.sql("cannot re-wrap keys"))?;
        }
        Ok(rows.len() as u64)
    }

    /// The store secret, unwrapped with the current master key.
    fn store_secret(&self, conn: &Connection) -> Result<[u8; HASH_LEN]> {
        let wrapped: Vec<u8> = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'store_secret'",
                [],
                |r| r.get(0),
            )
            .map_err(self.sql("cannot read the meta table"))?;
        let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
        let plain = unseal(ciphers.current().1, &wrapped, STORE_SECRET_AAD).ok_or_else(|| {
            Error::key_store(format!(
                "key store {}: the store secret does not decrypt",
                self.path.display()
            ))
        })?;
        plain.as_slice().try_into().map_err(|_| {
            Error::key_store(format!(
                "key store {}: the store secret is malformed",
                self.path.display()
            ))
        })
    }

    /// Copies the WAL into the database; best effort (another connection reading the WAL can
    /// hold part of it back until a later checkpoint). `TRUNCATE` also empties the WAL file,
    /// waiting (busy timeout) for readers: after deletions, so no trace stays in it. `PASSIVE`
    /// never waits.
    fn checkpoint(&self, conn: &Connection, mode: Checkpoint) {
        let sql = match mode {
            Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        };
        match conn.query_row(sql, [], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        }) {
            Ok((busy, log, copied)) if busy != 0 || copied < log => tracing::debug!(
                path = %self.path.display(), log, copied,
                "WAL checkpoint incomplete: another connection is reading"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(
                path = %self.path.display(),
                error = %e,
                "WAL checkpoint failed"
            ),
        }
    }

    /// Deletes a subject's keys, tombstones their scopes and audits it, in one transaction.
    fn forget(&self, subject: &LookupHash) -> Result<Forgotten> {
        let at = now_ms();
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("cannot start a write transaction"))?;
        // keys other handles just logged are deleted too
        self.fold_log(&tx, &mut self.lock_log())?;
        let rows: Vec<([u8; 16], LookupHash, i64)> = {
            let mut stmt = tx
                .prepare_cached(SUBJECT_SCOPES)
                .map_err(self.sql("cannot read keys"))?;
            stmt.query_map([subject], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|rows| rows.collect())
                .map_err(self.sql("cannot read keys"))?
        };
        for (_, scope, window) in &rows {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO tombstones (scope_hash, window_start_ms, forgotten_at_ms) \
                 VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| st.execute(rusqlite::params![scope, window, at]))
            .map_err(self.sql("cannot record a tombstone"))?;
        }
        for sql in [
            FORGET_KEYS,
            // Every link to the deleted keys, including other subjects' links.
            "DELETE FROM subject_keys WHERE key_link IN \
             (SELECT key_link FROM subject_keys WHERE subject_hash = ?1)",
        ] {
            tx.prepare_cached(sql)
                .and_then(|mut st| st.execute([subject]))
                .map_err(self.sql("cannot delete keys"))?;
        }
        self.insert_audit(
            &tx,
            &AuditEntry {
                at_ms: at,
                operation: AuditOperation::Forgotten,
                keys: rows.len() as u64,
                subject: Some(SubjectHash::from_bytes(*subject)),
                group: None,
                detail: String::new(),
            },
        )?;
        tx.commit().map_err(self.sql("cannot commit deletions"))?;
        if !rows.is_empty() {
            self.checkpoint(&conn, Checkpoint::Truncate);
        }
        Ok(Forgotten {
            subject: SubjectHash::from_bytes(*subject),
            key_links: rows.iter().map(|(l, _, _)| Uuid::from_bytes(*l)).collect(),
            at_ms: at,
        })
    }

    fn forget_subject(&self, subject: &LookupHash) -> Result<u64> {
        Ok(self.forget(subject)?.key_links.len() as u64)
    }

    fn purge_expired(&self, now: i64) -> Result<u64> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("cannot start a write transaction"))?;
        // keys other handles just logged are deleted too
        self.fold_log(&tx, &mut self.lock_log())?;
        tx.execute(
            "DELETE FROM subject_keys WHERE key_link IN \
             (SELECT key_link FROM keys WHERE expires_at_ms < ?1)",
            [now],
        )
        .map_err(self.sql("cannot delete keys"))?;
        let deleted = tx
            .execute("DELETE FROM keys WHERE expires_at_ms < ?1", [now])
            .map_err(self.sql("cannot delete keys"))? as u64;
        self.insert_audit(
            &tx,
            &AuditEntry {
                at_ms: now_ms(),
                operation: AuditOperation::Purged,
                keys: deleted,
                subject: None,
                group: None,
                detail: format!("keys expiring before {now}"),
            },
        )?;
        tx.commit().map_err(self.sql("cannot commit deletions"))?;
        if deleted > 0 {
            self.checkpoint(&conn, Checkpoint::Truncate);
        }
        Ok(deleted)
    }
}

#[async_trait]
impl KeyStore for EmbeddedKeyStore {
    fn lookup_key(&self) -> &LookupKey {
        &self.inner.lookup
    }

    async fn get_or_create(&self, scopes: &[ScopeRequest]) -> Result<Vec<ResolvedKey>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let scopes = scopes.to_vec();
        self.run(move |inner| inner.get_or_create(&scopes)).await
    }

    async fn sync(&self) -> Result<()> {
        self.run(|inner| inner.sync_wal()).await
    }

    /// The checkpoint SQLite would make when the store closes, made beside the job's commit
    /// (at 1M rows, 95k new keys: ~50 ms copying a 21 MB log, which was the job's last step).
    /// Passive: it copies what no other connection still reads and never waits for one (a job
    /// sharing the store with another process would otherwise wait up to the busy timeout).
    async fn settle(&self) -> Result<()> {
        self.run(|inner| {
            inner.checkpoint(&inner.lock(), Checkpoint::Passive);
            Ok(())
        })
        .await
    }

    async fn get_by_key_links(&self, links: &[Uuid]) -> Result<Vec<Option<Arc<DataKey>>>> {
        if links.is_empty() {
            return Ok(Vec::new());
        }
        let links = links.to_vec();
        self.run(move |inner| inner.get_by_key_links(&links)).await
    }

    async fn subject_key_links(&self, subject: &SubjectHash) -> Result<Vec<Uuid>> {
        let hash = *subject.as_bytes();
        self.run(move |inner| inner.subject_key_links(&hash)).await
    }

    async fn forget_subject(&self, subject: &SubjectHash) -> Result<u64> {
        let hash = *subject.as_bytes();
        self.run(move |inner| inner.forget_subject(&hash)).await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64> {
        self.run(move |inner| inner.purge_expired(now_ms)).await
    }

    async fn subject_keys(&self, subject: &SubjectHash) -> Result<Vec<KeyInfo>> {
        let hash = *subject.as_bytes();
        self.run(move |inner| inner.subject_keys(&hash)).await
    }

    async fn list_subjects(&self) -> Result<Vec<SubjectKeys>> {
        self.run(|inner| inner.list_subjects()).await
    }

    async fn forget(&self, subject: &SubjectHash) -> Result<Forgotten> {
        let hash = *subject.as_bytes();
        self.run(move |inner| inner.forget(&hash)).await
    }

    async fn key_stats(&self) -> Result<Vec<KeyStats>> {
        self.run(|inner| inner.key_stats()).await
    }

    async fn count_expired(&self, now_ms: i64) -> Result<u64> {
        self.run(move |inner| inner.count_expired(now_ms)).await
    }

    async fn export_keys(
        &self,
        group: &GroupHash,
        created_since_ms: Option<i64>,
    ) -> Result<Vec<ExportedKey>> {
        let hash = *group.as_bytes();
        self.run(move |inner| inner.export_keys(&hash, created_since_ms))
            .await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let entry = entry.clone();
        self.run(move |inner| inner.append_audit(&entry)).await
    }

    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        self.run(|inner| inner.audit_log()).await
    }

    async fn rotate_master(&self, new_master: &MasterKey) -> Result<RotationReport> {
        let new = new_master.clone();
        self.run(move |inner| inner.rotate_master(&new)).await
    }

    fn describe(&self) -> String {
        format!("embedded key store at {}", self.inner.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Deref;

    const KEY_A: [u8; 32] = [0x11; 32];
    const KEY_B: [u8; 32] = [0x22; 32];

    fn key(bytes: [u8; 32]) -> MasterKeySource {
        MasterKeySource::Key(MasterKey::from_bytes(bytes))
    }

    fn open(path: &Path) -> Plain {
        Plain(EmbeddedKeyStore::open(path, key(KEY_A)).unwrap())
    }

    /// A scope in plaintext, as these tests write it; [`Plain`] hashes it the way the engine does.
    #[derive(Clone, Copy)]
    struct ScopeRequest<'a> {
        group: &'a str,
        key_value: &'a [u8],
        window_start_ms: i64,
        expires_at_ms: i64,
        subject: Option<&'a [u8]>,
    }

    /// The store behind the engine's side of the trait boundary: hashes plaintext with the
    /// store's lookup key, then calls the trait.
    #[derive(Debug)]
    struct Plain(EmbeddedKeyStore);

    impl Deref for Plain {
        type Target = EmbeddedKeyStore;
        fn deref(&self) -> &EmbeddedKeyStore {
            &self.0
        }
    }

    impl Plain {
        async fn get_or_create(&self, scopes: &[ScopeRequest<'_>]) -> Result<Vec<ResolvedKey>> {
            self.get_or_create_labelled(scopes, Default::default())
                .await
        }

        /// [`Plain::get_or_create`] with `labels` (group and policy) recorded with new keys.
        async fn get_or_create_labelled(
            &self,
            scopes: &[ScopeRequest<'_>],
            labels: Arc<keylink_core::keystore::KeyLabels>,
        ) -> Result<Vec<ResolvedKey>> {
            let l = self.0.lookup_key();
            let hashed: Vec<_> = scopes
                .iter()
                .map(|s| keylink_core::keystore::ScopeRequest {
                    scope: l.scope_hash(s.group, s.key_value),
                    window_start_ms: s.window_start_ms,
                    expires_at_ms: s.expires_at_ms,
                    subject: s.subject.map(|x| l.subject_hash(x)),
                    labels: Arc::clone(&labels),
                })
                .collect();
            self.0.get_or_create(&hashed).await
        }

        async fn subject_key_links(&self, subject: &[u8]) -> Result<Vec<Uuid>> {
            let hash = self.0.lookup_key().subject_hash(subject);
            self.0.subject_key_links(&hash).await
        }

        async fn forget_subject(&self, subject: &[u8]) -> Result<u64> {
            let hash = self.0.lookup_key().subject_hash(subject);
            self.0.forget_subject(&hash).await
        }
    }

    fn scope<'a>(group: &'a str, value: &'a [u8], window: i64) -> ScopeRequest<'a> {
        ScopeRequest {
            group,
            key_value: value,
            window_start_ms: window,
            expires_at_ms: window + 1_000,
            subject: None,
        }
    }

    fn links(keys: &[ResolvedKey]) -> Vec<Uuid> {
        keys.iter().map(|k| k.key.key_link).collect()
    }

    /// Rows of `table`, once the key log is folded into the key tables.
    fn count(store: &Plain, table: &str) -> i64 {
        store
            .inner
            .lock_folded()
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn keys_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let first = {
            let store = open(&path);
            let keys = store
                .get_or_create(&[scope("g", b"alice", 0)])
                .await
                .unwrap();
            assert!(keys[0].created);
            keys[0].key.clone()
        };
        let store = open(&path);
        let again = store
            .get_or_create(&[scope("g", b"alice", 0)])
            .await
            .unwrap();
        assert!(!again[0].created);
        assert_eq!(again[0].key.key_link, first.key_link);
        assert_eq!(again[0].key.key_id, first.key_id);
        assert_eq!(again[0].key.material.expose(), first.material.expose());
        assert_eq!(again[0].key.window_start_ms, 0);
        assert_eq!(again[0].key.expires_at_ms, 1_000);
        let by_link = store.get_by_key_links(&[first.key_link]).await.unwrap();
        assert_eq!(
            by_link[0].as_ref().unwrap().material.expose(),
            first.material.expose()
        );
        assert!(store.describe().starts_with("embedded key store at "));
        assert!(store.describe().ends_with("keys.db"));
    }

    #[tokio::test]
    async fn distinct_scopes_get_distinct_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let requests = [
            scope("g", b"alice", 0),
            scope("g", b"alice", 1),
            scope("h", b"alice", 0),
            scope("g", b"bob", 0),
            // Length-prefixing keeps these apart.
            scope("ab", b"c", 0),
            scope("a", b"bc", 0),
            scope("", b"", 0),
        ];
        let keys = store.get_or_create(&requests).await.unwrap();
        assert!(keys.iter().all(|k| k.created));
        let unique: HashSet<Uuid> = links(&keys).into_iter().collect();
        assert_eq!(unique.len(), requests.len());
        let materials: HashSet<[u8; KEY_LEN]> =
            keys.iter().map(|k| *k.key.material.expose()).collect();
        assert_eq!(materials.len(), requests.len());
        for k in &keys {
            assert!(k.key.key_id >= 1 && k.key.key_id <= i32::MAX as u32);
            assert_eq!(k.key.key_link.get_version_num(), 4);
        }
        assert_eq!(count(&store, "keys"), requests.len() as i64);
    }

    #[tokio::test]
    async fn duplicate_scopes_in_one_call_share_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let requests = [
            scope("g", b"alice", 0),
            scope("g", b"bob", 0),
            scope("g", b"alice", 0),
            scope("g", b"alice", 0),
        ];
        let keys = store.get_or_create(&requests).await.unwrap();
        let created: Vec<bool> = keys.iter().map(|k| k.created).collect();
        assert_eq!(created, [true, true, false, false]);
        assert_eq!(keys[0].key.key_link, keys[2].key.key_link);
        assert_eq!(keys[0].key.key_link, keys[3].key.key_link);
        assert_ne!(keys[0].key.key_link, keys[1].key.key_link);
        assert_eq!(count(&store, "keys"), 2);
        // Again, all existing: nothing created.
        let keys2 = store.get_or_create(&requests).await.unwrap();
        assert!(keys2.iter().all(|k| !k.created));
        assert_eq!(links(&keys), links(&keys2));
    }

    fn hundred_values() -> Vec<Vec<u8>> {
        (0..100)
            .map(|i| format!("value-{i}").into_bytes())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_tasks_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir.path().join("keys.db")));
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let values = hundred_values();
                let mut order: Vec<usize> = (0..100).collect();
                order.rotate_left(t * 13);
                let mut result = vec![Uuid::nil(); 100];
                // Several calls per task, in different orders, to interleave.
                for chunk in order.chunks(25) {
                    let requests: Vec<_> =
                        chunk.iter().map(|&i| scope("g", &values[i], 0)).collect();
                    let keys = store.get_or_create(&requests).await.unwrap();
                    for (&i, k) in chunk.iter().zip(&keys) {
                        result[i] = k.key.key_link;
                    }
                }
                result
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert!(results.iter().all(|r| r == &results[0]));
        assert_eq!(results[0].iter().collect::<HashSet<_>>().len(), 100);
        assert_eq!(count(&store, "keys"), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_instances_on_one_file_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        // Open both at once too: the initialisation itself races.
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| open(&path));
            let b = s.spawn(|| open(&path));
            (a.join().unwrap(), b.join().unwrap())
        });
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut tasks = Vec::new();
        for t in 0..6 {
            let store = Arc::clone(if t % 2 == 0 { &a } else { &b });
            tasks.push(tokio::spawn(async move {
                let values = hundred_values();
                let mut requests: Vec<_> = values.iter().map(|v| scope("g", v, 0)).collect();
                if t >= 2 {
                    requests.reverse();
                }
                let mut keys = links(&store.get_or_create(&requests).await.unwrap());
                if t >= 2 {
                    keys.reverse();
                }
                keys
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert!(results.iter().all(|r| r == &results[0]));
        assert_eq!(count(&a, "keys"), 100);
        assert_eq!(count(&b, "keys"), 100);
    }

    const CHILD_DB: &str = "KEYLINK_TEST_CHILD_DB";
    const CHILD_KEY: &str = "KEYLINK_TEST_CHILD_KEY";

    /// Run by `two_processes_agree` in child processes: resolves the hundred scopes, prints their
    /// links, and exits without closing the store (so only committed data survives).
    #[tokio::test]
    #[ignore = "helper process of two_processes_agree"]
    async fn child_process_worker() {
        let (Some(db), Some(master)) = (std::env::var_os(CHILD_DB), std::env::var(CHILD_KEY).ok())
        else {
            return;
        };
        let master = MasterKey::from_base64(&master, "test key").unwrap();
        let store =
            Plain(EmbeddedKeyStore::open(Path::new(&db), MasterKeySource::Key(master)).unwrap());
        let values = hundred_values();
        let requests: Vec<_> = values.iter().map(|v| scope("g", v, 0)).collect();
        let keys = store.get_or_create(&requests).await.unwrap();
        // A leading newline: libtest has printed "test … " without one.
        let mut out = String::from("\n");
        for (i, k) in keys.iter().enumerate() {
            out.push_str(&format!("LINK {i} {}\n", k.key.key_link));
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes()).unwrap();
        stdout.flush().unwrap();
        std::process::exit(0);
    }

    #[tokio::test]
    async fn two_processes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let test_path = module_path!().split_once("::").unwrap().1;
        let children: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        &format!("{test_path}::child_process_worker"),
                        "--exact",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_DB, &path)
                    .env(CHILD_KEY, BASE64.encode(KEY_A))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Wait for every child before asserting: a panic here would delete their files.
        let outputs: Vec<_> = children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect();
        let mut results = Vec::new();
        for out in outputs {
            assert!(out.status.success());
            let mut result = vec![Uuid::nil(); 100];
            for line in String::from_utf8(out.stdout).unwrap().lines() {
                if let Some(rest) = line.strip_prefix("LINK ") {
                    let (i, link) = rest.split_once(' ').unwrap();
                    result[i.parse::<usize>().unwrap()] = link.parse().unwrap();
                }
            }
            assert!(!result.contains(&Uuid::nil()), "a child printed no links");
            results.push(result);
        }
        assert!(results.iter().all(|r| r == &results[0]));
        // The children exited without closing: their keys are on disk.
        let store = open(&path);
        let values = hundred_values();
        let requests: Vec<_> = values.iter().map(|v| scope("g", v, 0)).collect();
        let keys = store.get_or_create(&requests).await.unwrap();
        assert!(keys.iter().all(|k| !k.created));
        assert_eq!(links(&keys), results[0]);
    }

    #[tokio::test]
    async fn wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        open(&path)
            .get_or_create(&[scope("g", b"alice", 0)])
            .await
            .unwrap();
        let err = EmbeddedKeyStore::open(&path, key(KEY_B)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyStore);
        assert_eq!(
            err.to_string(),
            format!("the master key does not match key store {}", path.display())
        );
        // The right key still works.
        open(&path);
    }

    #[test]
    fn bad_key_files_are_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let file = dir.path().join("bad.key");
        let cases: [(&[u8], &str); 4] = [
            (b"not base64 at all!", "not base64"),
            (b"AAAA\n", "found 3 bytes"),
            (b"", "found 0 bytes"),
            (&[0xff, 0xfe, 0x00], "cannot read"),
        ];
        for (content, expected) in cases {
            fs::write(&file, content).unwrap();
            let err = EmbeddedKeyStore::open(&path, MasterKeySource::File(file.clone()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(expected), "{err}");
        }
        // A 33-byte key: its bytes are not in the message.
        fs::write(&file, BASE64.encode([0x5a; 33])).unwrap();
        let err = EmbeddedKeyStore::open(&path, MasterKeySource::File(file.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("found 33 bytes") && !err.contains("WlpaWl"),
            "{err}"
        );
    }

    #[test]
    fn env_master_key_wins_and_is_validated() {
        let file = PathBuf::from("/somewhere/k");
        let env = Some(OsString::from(BASE64.encode(KEY_B)));
        match MasterKeySource::from_env_value(env, file.clone()).unwrap() {
            MasterKeySource::Key(k) => assert_eq!(*k.expose(), KEY_B),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            MasterKeySource::from_env_value(None, file.clone()).unwrap(),
            MasterKeySource::File(f) if f == file
        ));
        for bad in ["", "  ", "zzz", "AAAA"] {
            let err = MasterKeySource::from_env_value(Some(bad.into()), file.clone()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains(MASTER_KEY_ENV), "{err}");
        }
    }

    fn ctx(dir: &Path) -> BuildContext {
        BuildContext {
            base_dir: dir.to_owned(),
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn default_key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let file = default_master_key_file(&path);
        assert_eq!(file, dir.path().join("keys.db.master-key"));
        let config = EmbeddedKeyStoreConfig {
            path: "keys.db".into(),
            master_key_file: None,
        };
        let store = config.build_with_env(&ctx(dir.path()), None).await.unwrap();
        assert_eq!(store.path(), path);
        let mode = fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let db_mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(db_mode & 0o077, 0, "{db_mode:o}");
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(BASE64.decode(text.trim()).unwrap().len(), 32);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")),
            "{names:?}"
        );
        drop(store);
        // Reopening reads the same key (a second key would not match).
        config.build_with_env(&ctx(dir.path()), None).await.unwrap();
        // The env key wins over the file: here it does not match.
        let env = Some(OsString::from(BASE64.encode(KEY_B)));
        let err = config
            .build_with_env(&ctx(dir.path()), env)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        // A lost key file is not silently replaced.
        fs::remove_file(&file).unwrap();
        let err = config
            .build_with_env(&ctx(dir.path()), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!file.exists());
    }

    #[tokio::test]
    async fn racing_first_opens_share_one_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let file = default_master_key_file(&path);
        let stores: Vec<Plain> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| EmbeddedKeyStore::open(&path, MasterKeySource::File(file.clone())))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| Plain(h.join().unwrap().unwrap()))
                .collect()
        });
        let first = stores[0]
            .get_or_create(&[scope("g", b"v", 0)])
            .await
            .unwrap();
        for store in &stores[1..] {
            let again = store.get_or_create(&[scope("g", b"v", 0)]).await.unwrap();
            assert_eq!(again[0].key.key_link, first[0].key.key_link);
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("master-key"))
            .collect();
        assert_eq!(names, ["keys.db.master-key"]);
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// The bytes of the database at `path` and of its WAL, if there is one.
    fn files(path: &Path) -> Vec<u8> {
        [path, &PathBuf::from(format!("{}-wal", path.display()))]
            .iter()
            .filter_map(|f| fs::read(f).ok())
            .flatten()
            .collect()
    }

    #[tokio::test]
    async fn files_never_hold_plaintext_values_subjects_or_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let store = open(&path);
        let values: Vec<String> = (0..50).map(|i| format!("ZZ-keyvalue-{i:03}-QQ")).collect();
        let subjects: Vec<String> = (0..50).map(|i| format!("ZZ-subject-{i:03}-QQ")).collect();
        let requests: Vec<_> = values
            .iter()
            .zip(&subjects)
            .map(|(v, s)| ScopeRequest {
                subject: Some(s.as_bytes()),
                ..scope("ZZ-group-QQ", v.as_bytes(), 0)
            })
            .collect();
        let keys = store.get_or_create(&requests).await.unwrap();
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let check = |stage: &str| {
            for file in [&path, &wal] {
                let Ok(bytes) = fs::read(file) else { continue };
                assert!(!contains(&bytes, b"ZZ-"), "{stage}: plaintext in {file:?}");
                for k in &keys {
                    assert!(!contains(&bytes, &k.key.material.expose()[..16]), "{stage}");
                    assert!(!contains(&bytes, &k.key.material.expose()[48..]), "{stage}");
                }
                assert!(!contains(&bytes, &KEY_A[..8]), "{stage}: master key");
            }
        };
        assert!(fs::metadata(&wal).unwrap().len() > 0);
        check("in the WAL");
        store
            .inner
            .checkpoint(&store.inner.lock(), Checkpoint::Truncate);
        check("after a checkpoint");
        // Sanity: the needle search does find things that are there.
        let bytes = fs::read(&path).unwrap();
        assert!(contains(&bytes, keys[0].key.key_link.as_bytes()));
    }

    #[tokio::test]
    async fn forgotten_and_purged_keys_leave_no_trace_in_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let store = open(&path);
        let values: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
        let requests: Vec<_> = values
            .iter()
            .map(|v| ScopeRequest {
                subject: Some(b"gone"),
                ..scope("g", v.as_bytes(), 0)
            })
            .chain([scope("g", b"expired", -5_000)])
            .collect();
        store.get_or_create(&requests).await.unwrap();
        let wrapped: Vec<Vec<u8>> = {
            // still in the key log: forgetting must erase them from there too
            let conn = store.inner.lock();
            let mut stmt = conn
                .prepare(
                    "SELECT wrapped_key FROM logged_keys UNION ALL SELECT wrapped_key FROM keys",
                )
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(wrapped.len(), 21);
        let subject_hash = *store.lookup_key().subject_hash(b"gone").as_bytes();
        let before = files(&path);
        assert!(wrapped.iter().all(|w| contains(&before, w)));
        assert!(contains(&before, &subject_hash));
        assert_eq!(store.forget_subject(b"gone").await.unwrap(), 20);
        assert_eq!(store.purge_expired(0).await.unwrap(), 1);
        let after = files(&path);
        for w in &wrapped {
            assert!(
                !contains(&after, w),
                "a deleted wrapped key is still in the files"
            );
        }
        // The subject's hash stays only where SPEC §9 wants it: in the audit log's record of
        // the erasure.
        assert_eq!(count(&store, "subject_keys"), 0);
        let audited: i64 = store
            .inner
            .lock()
            .query_row(
                "SELECT count(*) FROM audit_log WHERE subject_hash = ?1",
                [subject_hash],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(audited, 1);
    }

    /// The migration to schema version 4 copies every key into a new table: the old table's
    /// pages must not keep a copy of a key that is forgotten later.
    #[tokio::test]
    async fn keys_forgotten_after_the_migration_leave_no_trace_in_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let with = |subject: &'static [u8], value: &'static [u8]| ScopeRequest {
            subject: Some(subject),
            ..scope("g", value, 0)
        };
        let wrapped_of = |store: &Plain, subject: &[u8]| -> Vec<Vec<u8>> {
            let conn = store.inner.lock_folded().unwrap();
            let mut stmt = conn
                .prepare(
                    "SELECT k.wrapped_key FROM keys k JOIN subject_keys s \
                     ON s.key_link = k.key_link WHERE s.subject_hash = ?1",
                )
                .unwrap();
            stmt.query_map([store.lookup_key().subject_hash(subject).as_bytes()], |r| {
                r.get(0)
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
        };
        let (gone, stays) = {
            let store = open(&path);
            store
                .get_or_create(&[
                    with(b"gone", b"a"),
                    with(b"gone", b"b"),
                    with(b"stays", b"c"),
                ])
                .await
                .unwrap();
            (wrapped_of(&store, b"gone"), wrapped_of(&store, b"stays"))
        };
        assert_eq!((gone.len(), stays.len()), (2, 1));
        back_to_version_3(&path)
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let store = open(&path);
        assert_eq!(store.forget_subject(b"gone").await.unwrap(), 2);
        drop(store);
        let files = files(&path);
        assert!(contains(&files, &stays[0]));
        for w in &gone {
            assert!(
                !contains(&files, w),
                "a forgotten key is still in the files"
            );
        }
    }

    /// Key transactions commit without waiting for the disk (another handle sees the keys at
    /// once), the connection is back to `synchronous = FULL` for everything else (forgetting
    /// must be durable when it returns), and `sync` flushes the WAL, also when there is none.
    #[tokio::test]
    async fn new_keys_are_committed_at_once_and_durable_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let store = open(&path);
        store.0.sync().await.unwrap();
        let made = store.get_or_create(&[scope("g", b"v", 0)]).await.unwrap();
        assert!(made[0].created);
        let synchronous: i64 = store
            .inner
            .lock()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2, "FULL again after the key transaction");
        let other = open(&path);
        let seen = other
            .0
            .get_by_key_links(&[made[0].key.key_link])
            .await
            .unwrap();
        assert_eq!(
            seen[0].as_ref().map(|k| k.key_link),
            Some(made[0].key.key_link)
        );
        assert!(path.with_file_name("keys.db-wal").exists());
        store.0.sync().await.unwrap();
        drop((store, other));
        // closed: the WAL is checkpointed and gone, and a sync of a reopened store still works
        let store = open(&path);
        store.0.sync().await.unwrap();
        let again = store.get_or_create(&[scope("g", b"v", 0)]).await.unwrap();
        assert!(!again[0].created);
        assert_eq!(again[0].key.key_link, made[0].key.key_link);
    }

    /// `settle` moves the log into the database file while the store is open: a copy of the file
    /// alone (what someone backing up `keys.db` takes) holds the keys. It does not wait for
    /// another handle that is reading.
    #[tokio::test]
    async fn settle_leaves_every_key_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let store = open(&path);
        let made = store
            .get_or_create(&[scope("g", b"v", 0), scope("g", b"w", 0)])
            .await
            .unwrap();
        store.0.sync().await.unwrap();
        let wal = store.inner.wal.clone().expect("WAL mode");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        // another connection in a read transaction: settle does not wait for it
        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM meta;")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), store.0.settle())
            .await
            .expect("settle waited for a reader")
            .unwrap();
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
        store.0.settle().await.unwrap();
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).unwrap();
        let copied = open(&copy);
        let seen = copied.0.get_by_key_links(&links(&made)).await.unwrap();
        assert!(
            seen.iter().all(Option::is_some),
            "a key is missing from the file"
        );
        // still open and usable
        let again = store.get_or_create(&[scope("g", b"v", 0)]).await.unwrap();
        assert_eq!(again[0].key.key_link, made[0].key.key_link);
    }

    /// The WAL that `sync` flushes is SQLite's, also under a path that is not UTF-8 (a path
    /// shown with `display()` would name another file, and the flush would find none).
    #[tokio::test]
    async fn sync_flushes_the_wal_of_a_path_that_is_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join(std::ffi::OsStr::from_bytes(b"keys-\xff"));
        std::fs::create_dir(&sub).unwrap();
        let store = open(&sub.join("keys.db"));
        store.get_or_create(&[scope("g", b"v", 0)]).await.unwrap();
        let wal = store.inner.wal.clone().expect("WAL mode");
        assert_eq!(wal, sub.join("keys.db-wal"));
        assert!(wal.exists());
        store.0.sync().await.unwrap();
    }

    /// The integer `meta` holds under `name`, if any.
    fn meta_int(store: &Plain, name: &str) -> Option<i64> {
        store
            .inner
            .lock()
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .unwrap()
    }

    fn generation(store: &Plain) -> i64 {
        meta_int(store, "log_generation").expect("a log generation")
    }

    /// A fold of an empty log (forget, purge and every rotation batch fold first) changes
    /// nothing, not even the generation that makes other handles read their log again; a fold of
    /// logged keys bumps it.
    #[tokio::test]
    async fn folding_an_empty_log_keeps_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let before = generation(&store);
        store.purge_expired(0).await.unwrap();
        store.forget_subject(b"nobody").await.unwrap();
        assert_eq!(generation(&store), before, "nothing was logged");
        store.get_or_create(&[scope("g", b"v", 0)]).await.unwrap();
        assert_eq!(logged(&store), (1, 0));
        store.purge_expired(0).await.unwrap();
        assert_eq!(logged(&store), (0, 1), "the purge folded the key in first");
        assert_eq!(generation(&store), before + 1);
        store.purge_expired(0).await.unwrap();
        assert_eq!(generation(&store), before + 1);
    }

    fn logged(store: &Plain) -> (i64, i64) {
        let conn = store.inner.lock();
        let n = |t: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        (n("logged_keys"), n("keys"))
    }

    /// `meta`'s bound of the windows in `keys` and the generation it holds under.
    fn folded_bound(store: &Plain) -> (Option<i64>, Option<i64>) {
        (
            meta_int(store, "folded_max_window"),
            meta_int(store, "folded_max_window_generation"),
        )
    }

    /// A new store's bound says `keys` holds no window; each fold raises it to the latest window
    /// folded, under the generation the fold made, and keys are found the same after.
    #[tokio::test]
    async fn each_fold_records_the_latest_window_in_the_key_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir.path().join("keys.db"));
        Arc::get_mut(&mut store.0.inner).unwrap().fold_at = 2;
        assert_eq!(folded_bound(&store), (Some(i64::MIN), Some(0)));
        let first = store
            .get_or_create(&[scope("g", b"a", 7_000), scope("g", b"b", 3_000)])
            .await
            .unwrap();
        assert_eq!(logged(&store), (0, 2), "two keys reach fold_at 2");
        assert_eq!(
            folded_bound(&store),
            (Some(7_000), Some(generation(&store)))
        );
        let later = store
            .get_or_create(&[scope("g", b"c", 1_000), scope("g", b"d", 2_000)])
            .await
            .unwrap();
        assert_eq!(logged(&store), (0, 4));
        assert_eq!(
            folded_bound(&store),
            (Some(7_000), Some(generation(&store))),
            "earlier windows leave the bound"
        );
        let again = store
            .get_or_create(&[scope("g", b"a", 7_000), scope("g", b"d", 2_000)])
            .await
            .unwrap();
        assert!(again.iter().all(|k| !k.created));
        assert_eq!(
            links(&again),
            vec![first[0].key.key_link, later[1].key.key_link]
        );
    }

    /// Moves the key log into the key tables as a keylink without the window bound did: the
    /// generation changes, the bound is left as it was.
    fn fold_like_an_older_keylink(store: &Plain) {
        store
            .inner
            .lock()
            .execute_batch(
                "BEGIN IMMEDIATE; \
                 INSERT INTO keys (key_link, scope_hash, window_start_ms, key_id, expires_at_ms, \
                 wrapped_key, created_at_ms, group_hash, policy_id, master_fp) \
                 SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms, \
                 wrapped_key, created_at_ms, group_hash, policy_id, master_fp FROM logged_keys; \
                 INSERT INTO key_links (key_link, key_row) SELECT key_link, id FROM keys \
                 WHERE key_link NOT IN (SELECT key_link FROM key_links); \
                 INSERT OR IGNORE INTO subject_keys (subject_hash, key_link) \
                 SELECT subject_hash, key_link FROM logged_links; \
                 DELETE FROM logged_keys; DELETE FROM logged_links; \
                 UPDATE meta SET value = value + 1 WHERE name = 'log_generation'; COMMIT;",
            )
            .unwrap();
    }

    /// A bound written under another generation is not trusted: after a fold by a keylink that
    /// does not keep it, a key of a later window than the bound is found in `keys`, not made
    /// again; the next fold that keeps it reads the key table's latest window.
    #[tokio::test]
    async fn a_window_bound_of_another_generation_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let early = store
            .get_or_create(&[scope("g", b"a", 1_000)])
            .await
            .unwrap();
        drop(store.inner.lock_folded().unwrap()); // folds the log
        assert_eq!(folded_bound(&store).0, Some(1_000));
        let late = store
            .get_or_create(&[scope("g", b"b", 9_000)])
            .await
            .unwrap();
        fold_like_an_older_keylink(&store);
        assert_eq!(logged(&store), (0, 2));
        assert_eq!(
            folded_bound(&store).0,
            Some(1_000),
            "an older fold left the bound"
        );

        let found = store
            .get_or_create(&[scope("g", b"b", 9_000), scope("g", b"a", 1_000)])
            .await
            .unwrap();
        assert!(found.iter().all(|k| !k.created), "made again");
        assert_eq!(
            links(&found),
            vec![late[0].key.key_link, early[0].key.key_link]
        );

        store
            .get_or_create(&[scope("g", b"c", 5_000)])
            .await
            .unwrap();
        drop(store.inner.lock_folded().unwrap()); // folds the log
        assert_eq!(
            folded_bound(&store),
            (Some(9_000), Some(generation(&store))),
            "the latest window in the key table, not the log's (5,000)"
        );
    }

    /// While the bound is current, a scope of a later window is not looked up in `keys` (the
    /// lookup it spares): a row there that no fold could have put there is never read. Once the
    /// bound is not known, it is.
    #[tokio::test]
    async fn a_current_window_bound_spares_the_key_table_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let made = store
            .get_or_create(&[scope("g", b"a", 5_000), scope("g", b"b", 5_000)])
            .await
            .unwrap();
        // both keys into `keys`, damaged, behind the bound's back (no fold, no new generation)
        store
            .inner
            .lock()
            .execute_batch(
                "INSERT INTO keys (key_link, scope_hash, window_start_ms, key_id, expires_at_ms, \
                 wrapped_key, created_at_ms) SELECT key_link, scope_hash, window_start_ms, \
                 key_id, expires_at_ms, x'00', created_at_ms FROM logged_keys; \
                 DELETE FROM logged_keys;",
            )
            .unwrap();
        assert_eq!(folded_bound(&store), (Some(i64::MIN), Some(0)));
        let a = store
            .get_or_create(&[scope("g", b"a", 5_000)])
            .await
            .unwrap();
        assert!(a[0].created, "the key table was not read");
        assert_ne!(a[0].key.key_link, made[0].key.key_link);

        store
            .inner
            .lock()
            .execute_batch("UPDATE meta SET value = value + 1 WHERE name = 'log_generation';")
            .unwrap();
        let e = store
            .get_or_create(&[scope("g", b"b", 5_000)])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be decrypted"), "{e}");
    }

    /// New keys go to the log; once it holds `fold_at` keys, the call that made them folds it
    /// into the indexed tables, and keys are found the same before and after.
    #[tokio::test]
    async fn the_key_log_is_folded_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir.path().join("keys.db"));
        Arc::get_mut(&mut store.0.inner).unwrap().fold_at = 10;
        let values: Vec<String> = (0..25).map(|i| format!("v{i}")).collect();
        let request = |range: std::ops::Range<usize>| -> Vec<ScopeRequest> {
            values[range]
                .iter()
                .map(|v| ScopeRequest {
                    subject: Some(b"s"),
                    ..scope("g", v.as_bytes(), 0)
                })
                .collect()
        };
        let first = store.get_or_create(&request(0..6)).await.unwrap();
        assert_eq!(logged(&store), (6, 0));
        let second = store.get_or_create(&request(3..12)).await.unwrap();
        assert_eq!(
            logged(&store),
            (0, 12),
            "12 keys in the log reach fold_at 10"
        );
        let third = store.get_or_create(&request(0..25)).await.unwrap();
        assert_eq!(logged(&store), (0, 25));
        assert_eq!(links(&first), links(&third[0..6]));
        assert_eq!(links(&second), links(&third[3..12]));
        assert_eq!(third.iter().filter(|k| k.created).count(), 13);
        assert_eq!(count(&store, "subject_keys"), 25);
    }

    /// Links alone fold the log too: one key that gains many subjects does not grow the log
    /// without bound.
    #[tokio::test]
    async fn many_links_to_one_key_fold_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir.path().join("keys.db"));
        Arc::get_mut(&mut store.0.inner).unwrap().fold_at = 10;
        let subjects: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
        let requests: Vec<ScopeRequest> = subjects
            .iter()
            .map(|s| ScopeRequest {
                subject: Some(s.as_bytes()),
                ..scope("g", b"shared", 0)
            })
            .collect();
        let keys = store.get_or_create(&requests[..4]).await.unwrap();
        assert_eq!(logged(&store), (1, 0));
        let again = store.get_or_create(&requests).await.unwrap();
        assert!(again.iter().all(|k| k.key.key_link == keys[0].key.key_link));
        let links_logged: i64 = store
            .inner
            .lock()
            .query_row("SELECT count(*) FROM logged_links", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            (logged(&store), links_logged),
            ((0, 1), 0),
            "12 links reach fold_at 10"
        );
        assert_eq!(count(&store, "subject_keys"), 12);
    }

    /// With fingerprints of 2 bits, nearly every lookup in the log index collides: keys and links
    /// are still found exactly, and none is made twice.
    #[tokio::test]
    async fn colliding_fingerprints_still_find_the_right_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let (mut a, mut b) = (open(&path), open(&path));
        for s in [&mut a, &mut b] {
            Arc::get_mut(&mut s.0.inner).unwrap().fingerprint_mask = 0b11;
        }
        let values: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
        let subjects: Vec<String> = (0..40).map(|i| format!("s{}", i % 7)).collect();
        let request = |range: std::ops::Range<usize>| -> Vec<ScopeRequest> {
            range
                .map(|i| ScopeRequest {
                    subject: Some(subjects[i].as_bytes()),
                    ..scope("g", values[i].as_bytes(), 0)
                })
                .collect()
        };
        let first = a.get_or_create(&request(0..25)).await.unwrap();
        let second = b.get_or_create(&request(10..40)).await.unwrap();
        let again = a.get_or_create(&request(0..40)).await.unwrap();
        assert_eq!(links(&first), links(&again[0..25]));
        assert_eq!(links(&second), links(&again[10..40]));
        assert_eq!(again.iter().filter(|k| k.created).count(), 0);
        assert_eq!(second.iter().filter(|k| k.created).count(), 15);
        let distinct: HashSet<Uuid> = links(&again).into_iter().collect();
        assert_eq!(distinct.len(), 40);
        assert_eq!(logged(&a), (40, 0));
        let link_rows: i64 = a
            .inner
            .lock()
            .query_row("SELECT count(*) FROM logged_links", [], |r| r.get(0))
            .unwrap();
        assert_eq!(link_rows, 40, "no subject link logged twice");
        assert_eq!(count(&a, "keys"), 40);
        assert_eq!(count(&a, "subject_keys"), 40);
    }

    /// A handle whose log index names a key that another handle then forgot does not hand that
    /// key out again: the forget folded the log and bumped its generation.
    #[tokio::test]
    async fn a_key_forgotten_through_another_handle_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let (a, b) = (open(&path), open(&path));
        let req = ScopeRequest {
            subject: Some(b"s"),
            ..scope("g", b"v", 0)
        };
        let before = a.get_or_create(std::slice::from_ref(&req)).await.unwrap();
        // b reads the log, then a forgets the subject
        let seen = b.get_or_create(std::slice::from_ref(&req)).await.unwrap();
        assert_eq!(links(&before), links(&seen));
        let generation = b.inner.lock_log().generation;
        assert_eq!(b.inner.lock_log().keys.len(), 1);
        assert_eq!(a.forget_subject(b"s").await.unwrap(), 1);
        let after = b.get_or_create(std::slice::from_ref(&req)).await.unwrap();
        assert_ne!(
            b.inner.lock_log().generation,
            generation,
            "b read the log again"
        );
        assert_ne!(links(&before), links(&after));
        assert!(after[0].created && after[0].after_forget);
        assert!(b.get_by_key_links(&links(&before)).await.unwrap()[0].is_none());
    }

    #[tokio::test]
    async fn swapped_rows_do_not_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let keys = store
            .get_or_create(&[scope("g", b"a", 0), scope("g", b"b", 0)])
            .await
            .unwrap();
        let (a, b) = (keys[0].key.key_link, keys[1].key.key_link);
        store
            .inner
            .lock_folded()
            .unwrap()
            .execute_batch(&format!(
                "UPDATE keys SET wrapped_key = \
                   (SELECT wrapped_key FROM keys WHERE key_link = x'{b}') \
                 WHERE key_link = x'{a}'",
                a = a.simple(),
                b = b.simple()
            ))
            .unwrap();
        let err = store.get_by_key_links(&[a]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyStore);
        assert!(err.to_string().contains(&a.to_string()), "{err}");
        assert!(store.get_or_create(&[scope("g", b"a", 0)]).await.is_err());
        // The row whose wrapped key was copied is intact.
        assert!(store.get_by_key_links(&[b]).await.unwrap()[0].is_some());
    }

    #[tokio::test]
    async fn subjects_are_linked_listed_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let with = |value: &'static [u8], window, subject: &'static [u8]| ScopeRequest {
            subject: Some(subject),
            ..scope("g", value, window)
        };
        let keys = store
            .get_or_create(&[
                with(b"alice-1", 0, b"alice"),
                with(b"alice-1", 1, b"alice"),
                with(b"shared", 0, b"alice"),
                with(b"shared", 0, b"bob"),
                with(b"bob-1", 0, b"bob"),
                scope("g", b"nobody", 0),
            ])
            .await
            .unwrap();
        let l = links(&keys);
        assert_eq!(l[2], l[3]);
        // Linking an existing key to a subject again changes nothing; a new subject is added.
        let again = store
            .get_or_create(&[with(b"alice-1", 0, b"alice"), with(b"nobody", 0, b"carol")])
            .await
            .unwrap();
        assert!(again.iter().all(|k| !k.created));
        assert_eq!(again[1].key.key_link, l[5]);

        let sorted = |mut v: Vec<Uuid>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(store.subject_key_links(b"alice").await.unwrap()),
            sorted(vec![l[0], l[1], l[2]])
        );
        assert_eq!(
            sorted(store.subject_key_links(b"bob").await.unwrap()),
            sorted(vec![l[2], l[4]])
        );
        assert_eq!(store.subject_key_links(b"carol").await.unwrap(), [l[5]]);
        assert!(store.subject_key_links(b"dave").await.unwrap().is_empty());

        assert_eq!(store.forget_subject(b"alice").await.unwrap(), 3);
        assert!(store.subject_key_links(b"alice").await.unwrap().is_empty());
        // Bob's link to the shared (now deleted) key is gone; his own key stays.
        assert_eq!(store.subject_key_links(b"bob").await.unwrap(), [l[4]]);
        let found = store.get_by_key_links(&l).await.unwrap();
        let present: Vec<bool> = found.iter().map(Option::is_some).collect();
        assert_eq!(present, [false, false, false, false, true, true]);
        assert_eq!(store.forget_subject(b"alice").await.unwrap(), 0);
        // A forgotten scope gets a new key if asked again.
        let fresh = store
            .get_or_create(&[scope("g", b"alice-1", 0)])
            .await
            .unwrap();
        assert!(fresh[0].created);
        assert_ne!(fresh[0].key.key_link, l[0]);
        assert!(store.get_by_key_links(&[Uuid::new_v4()]).await.unwrap()[0].is_none());
    }

    #[tokio::test]
    async fn purge_deletes_expired_keys_and_their_links() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let mk = |value: &'static [u8], expires, subject| ScopeRequest {
            group: "g",
            key_value: value,
            window_start_ms: 0,
            expires_at_ms: expires,
            subject,
        };
        let keys = store
            .get_or_create(&[
                mk(b"old", 100, Some(b"s".as_slice())),
                mk(b"edge", 200, None),
                mk(b"new", 300, Some(b"s".as_slice())),
            ])
            .await
            .unwrap();
        let l = links(&keys);
        assert_eq!(store.purge_expired(200).await.unwrap(), 1);
        let present: Vec<bool> = store
            .get_by_key_links(&l)
            .await
            .unwrap()
            .iter()
            .map(Option::is_some)
            .collect();
        assert_eq!(present, [false, true, true]);
        assert_eq!(store.subject_key_links(b"s").await.unwrap(), [l[2]]);
        assert_eq!(count(&store, "subject_keys"), 1);
        assert_eq!(store.purge_expired(200).await.unwrap(), 0);
        assert_eq!(store.purge_expired(i64::MAX).await.unwrap(), 2);
        assert_eq!(count(&store, "subject_keys"), 0);
    }

    #[tokio::test]
    async fn debug_output_has_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let keys = store
            .get_or_create(&[ScopeRequest {
                subject: Some(b"secret-subject"),
                ..scope("g", b"secret-value", 0)
            }])
            .await
            .unwrap();
        let key = &keys[0].key;
        let config = EmbeddedKeyStoreConfig::default();
        let master = MasterKey::from_bytes(KEY_A);
        let shown = format!(
            "{store:?} {store:#?} {key:?} {:?} {config:?} {master:?} {:?}",
            keys[0],
            MasterKeySource::Key(master.clone())
        );
        let hex: String = key.material.expose()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        for secret in [
            hex.as_str(),
            &format!("{:?}", &key.material.expose()[..4]),
            "secret-value",
            "secret-subject",
            &BASE64.encode(KEY_A),
            "17, 17, 17",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("REDACTED"));
        assert!(shown.contains("keys.db"));
    }

    #[test]
    fn config_is_registered_and_strict() {
        let config: Box<dyn KeyStoreConfig> =
            serde_json::from_str(r#"{"type":"embedded","path":"k.db"}"#).unwrap();
        config.validate().unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("k.db"), "{shown}");
        let config: Box<dyn KeyStoreConfig> =
            serde_json::from_str(r#"{"type":"embedded"}"#).unwrap();
        assert!(format!("{config:?}").contains("keylink-keys.db"));
        assert!(
            serde_json::from_str::<Box<dyn KeyStoreConfig>>(r#"{"type":"embedded","pth":"x"}"#)
                .is_err()
        );
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains(r#""type":"embedded""#), "{json}");
        for path in ["", ":memory:"] {
            let config = EmbeddedKeyStoreConfig {
                path: path.into(),
                master_key_file: None,
            };
            assert_eq!(config.validate().unwrap_err().kind(), ErrorKind::Config);
        }
        let config = EmbeddedKeyStoreConfig {
            path: "k.db".into(),
            master_key_file: Some("keys/master".into()),
        };
        assert_eq!(
            config.resolve(&ctx(Path::new("/etc/keylink"))),
            (
                PathBuf::from("/etc/keylink/k.db"),
                PathBuf::from("/etc/keylink/keys/master")
            )
        );
        let config = EmbeddedKeyStoreConfig {
            path: "/abs/k.db".into(),
            master_key_file: None,
        };
        assert_eq!(
            config.resolve(&ctx(Path::new("/etc/keylink"))).1,
            PathBuf::from("/abs/k.db.master-key")
        );
    }

    /// A store of schema version 1 (as keylink 0.1 wrote it) is migrated on open: its keys stay
    /// readable, get the master key's fingerprint, and lifecycle operations work on it.
    #[tokio::test]
    async fn version_1_stores_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let link = {
            let store = open(&path);
            let keys = store
                .get_or_create(&[ScopeRequest {
                    subject: Some(b"s"),
                    ..scope("g", b"v", 0)
                }])
                .await
                .unwrap();
            drop(store.inner.lock_folded().unwrap());
            keys[0].key.key_link
        };
        // back to version 1's schema
        back_to_version_3(&path).execute_batch(
                "DROP TABLE key_log; DROP TABLE link_log; \
                 DELETE FROM meta WHERE name = 'log_generation'; DROP TABLE key_groups; DROP TABLE tombstones; DROP TABLE audit_log; \
                 DROP INDEX keys_group; DROP INDEX keys_master_fp; \
                 ALTER TABLE keys DROP COLUMN group_hash; ALTER TABLE keys DROP COLUMN policy_id; \
                 ALTER TABLE keys DROP COLUMN master_fp; \
                 UPDATE meta SET value = 1 WHERE name = 'schema_version';",
            )
            .unwrap();
        let store = open(&path);
        let version: i64 = store
            .inner
            .lock()
            .query_row(
                "SELECT value FROM meta WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert!(store.get_by_key_links(&[link]).await.unwrap()[0].is_some());
        let info = store
            .0
            .subject_keys(&store.lookup_key().subject_hash(b"s"))
            .await
            .unwrap();
        assert_eq!(info[0].group, None);
        let report = store
            .rotate_master(&MasterKey::from_bytes(KEY_B))
            .await
            .unwrap();
        assert_eq!(report.rewrapped, 1);
        let reopened = EmbeddedKeyStore::open(&path, key(KEY_B)).unwrap();
        assert!(reopened.get_by_key_links(&[link]).await.unwrap()[0].is_some());
    }

    /// Turns the key tables back into their shape before schema version 4 (the key link the
    /// primary key of `keys`, the group index by the millisecond), keeping the keys.
    const KEYS_BEFORE_VERSION_4: &str = "
        DROP TRIGGER keys_deleted;
        DROP TABLE key_links;
        CREATE TABLE keys_3 (
            key_link        BLOB PRIMARY KEY NOT NULL,
            scope_hash      BLOB NOT NULL,
            window_start_ms INTEGER NOT NULL,
            key_id          INTEGER NOT NULL,
            expires_at_ms   INTEGER NOT NULL,
            wrapped_key     BLOB NOT NULL,
            created_at_ms   INTEGER NOT NULL,
            group_hash      BLOB,
            policy_id       TEXT,
            master_fp       INTEGER,
            UNIQUE (scope_hash, window_start_ms)
        ) STRICT;
        INSERT INTO keys_3 SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms,
            wrapped_key, created_at_ms, group_hash, policy_id, master_fp FROM keys;
        DROP TABLE keys;
        ALTER TABLE keys_3 RENAME TO keys;
        CREATE INDEX keys_expires_at ON keys (expires_at_ms);
        CREATE INDEX keys_group ON keys (group_hash, created_at_ms);
        CREATE INDEX keys_master_fp ON keys (master_fp);
        ALTER TABLE logged_keys RENAME TO key_log;
        ALTER TABLE logged_links RENAME TO link_log;
    ";

    /// Turns the store at `path` back into schema version 3 (erasing what it drops, as the store
    /// does); returns the connection that did it.
    fn back_to_version_3(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("PRAGMA secure_delete = ON;").unwrap();
        conn.execute_batch(KEYS_BEFORE_VERSION_4).unwrap();
        conn.execute(
            "UPDATE meta SET value = 3 WHERE name = 'schema_version'",
            [],
        )
        .unwrap();
        conn
    }

    /// Keys of group `group` for the values `v0`, `v1`, …, made in one call.
    async fn group_keys(store: &Plain, group: &str, n: usize) -> Vec<Uuid> {
        let values: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
        let requests: Vec<_> = values
            .iter()
            .map(|v| scope(group, v.as_bytes(), 0))
            .collect();
        let labels = Arc::new(keylink_core::keystore::KeyLabels {
            group: group.to_string(),
            policy_id: String::new(),
        });
        links(
            &store
                .get_or_create_labelled(&requests, labels)
                .await
                .unwrap(),
        )
    }

    /// A group's keys made at or after an instant, across minute boundaries (the index holds
    /// minutes, the instant is a millisecond), oldest first, the key link ordering keys made in
    /// the same millisecond; and none of another group.
    #[tokio::test]
    async fn exports_keys_made_since_an_instant() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let made = group_keys(&store, "g", 7).await;
        let other = group_keys(&store, "h", 2).await;
        // the newest on the first rows, so that the rows' order is not the answer
        let times = [180_000, 120_000, 119_999, 60_001, 60_000, 60_000, 59_999];
        {
            let conn = store.inner.lock_folded().unwrap();
            for (link, t) in made.iter().zip(times).chain(other.iter().zip([60_000, 0])) {
                let n = conn
                    .execute(
                        "UPDATE keys SET created_at_ms = ?1 WHERE key_link = ?2",
                        rusqlite::params![t, link.as_bytes()],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            }
        }
        let mut all: Vec<(i64, Uuid)> = times.into_iter().zip(made).collect();
        all.sort();
        let group = store.lookup_key().group_hash("g");
        for since in [
            None,
            Some(i64::MIN),
            Some(-60_001),
            Some(0),
            Some(59_999),
            Some(60_000),
            Some(60_001),
            Some(119_999),
            Some(120_000),
            Some(120_001),
            Some(180_000),
            Some(180_001),
            Some(i64::MAX),
        ] {
            let got: Vec<(i64, Uuid)> = store
                .export_keys(&group, since)
                .await
                .unwrap()
                .iter()
                .map(|e| (e.created_at_ms, e.key.key_link))
                .collect();
            let want: Vec<(i64, Uuid)> = all
                .iter()
                .copied()
                .filter(|(t, _)| since.is_none_or(|s| *t >= s))
                .collect();
            assert_eq!(got, want, "since {since:?}");
        }
    }

    /// Every key has its row in `key_links`, pointing at it, and a deleted key keeps none:
    /// after a fold, a forget and a purge.
    #[tokio::test]
    async fn key_links_follow_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let with = |subject: &'static [u8], value: &'static [u8], window| ScopeRequest {
            subject: Some(subject),
            ..scope("g", value, window)
        };
        store
            .get_or_create(&[
                with(b"alice", b"a", 0),
                with(b"alice", b"b", 10_000),
                with(b"bob", b"c", 0),
                scope("g", b"d", 10_000),
                scope("g", b"e", 10_000),
            ])
            .await
            .unwrap();
        let counts = |store: &Plain| {
            (
                count(store, "keys"),
                count(store, "key_links"),
                count(
                    store,
                    "keys k JOIN key_links l ON l.key_row = k.id AND l.key_link = k.key_link",
                ),
            )
        };
        assert_eq!(counts(&store), (5, 5, 5));
        assert_eq!(store.forget_subject(b"alice").await.unwrap(), 2);
        assert_eq!(counts(&store), (3, 3, 3));
        assert_eq!(store.purge_expired(5_000).await.unwrap(), 1);
        assert_eq!(counts(&store), (2, 2, 2));
    }

    /// What SQLite plans for `sql` (parameters unbound), a line per step.
    fn plan(store: &Plain, sql: &str) -> Vec<String> {
        let conn = store.inner.lock();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            out.push(row.get::<_, String>(3).unwrap());
        }
        out
    }

    /// The export of a group's recent keys reads them through the group's minute index, and the
    /// statements that go by key link or subject through the primary keys of `key_links` and
    /// `keys`: none reads a whole table or builds an index of its own.
    #[test]
    fn statements_go_through_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("keys.db"));
        let export = plan(&store, EXPORT_KEYS);
        assert_eq!(export.len(), 1, "{export:?}");
        assert!(
            export[0].starts_with("SEARCH keys USING INDEX keys_group_minute (group_hash=? AND"),
            "{export:?}"
        );
        for sql in [
            KEY_BY_LINK,
            SUBJECT_KEYS,
            SUBJECT_SCOPES,
            FORGET_KEYS,
            REWRAP_KEY,
        ] {
            let steps = plan(&store, sql);
            assert!(
                steps
                    .iter()
                    .any(|s| s.contains("USING PRIMARY KEY (key_link=?)")),
                "{sql}: {steps:?}"
            );
            assert!(
                !steps
                    .iter()
                    .any(|s| s.starts_with("SCAN") || s.contains("AUTOMATIC")),
                "{sql}: {steps:?}"
            );
        }
    }

    /// A store of schema version 3 is migrated on open: its key links get their table, its group
    /// index becomes the minute's, its log tables are renamed, and its keys are found as before.
    #[tokio::test]
    async fn version_3_stores_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let made = {
            let store = open(&path);
            let made = group_keys(&store, "g", 3).await;
            drop(store.inner.lock_folded().unwrap());
            made
        };
        // a process of an older keylink, which has the store open across the migration
        let older = back_to_version_3(&path);
        let store = open(&path);
        // ... fails at its next call (each first asks whether the log holds rows), instead of
        // folding keys without their links
        let err = older
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM key_log) OR EXISTS (SELECT 1 FROM link_log)",
                [],
                |r| r.get::<_, bool>(0),
            )
            .unwrap_err();
        assert!(err.to_string().contains("no such table: key_log"), "{err}");
        let (version, indexes) = {
            let conn = store.inner.lock();
            let version: i64 = conn
                .query_row(
                    "SELECT value FROM meta WHERE name = 'schema_version'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let indexes: Vec<String> = conn
                .prepare(
                    "SELECT name FROM sqlite_master \
                     WHERE type = 'index' AND name LIKE 'keys_group%'",
                )
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            (version, indexes)
        };
        assert_eq!(
            (version, indexes),
            (4, vec!["keys_group_minute".to_string()])
        );
        let mut exported: Vec<Uuid> = store
            .export_keys(&store.lookup_key().group_hash("g"), Some(0))
            .await
            .unwrap()
            .iter()
            .map(|e| e.key.key_link)
            .collect();
        exported.sort();
        let mut made = made;
        made.sort();
        assert_eq!(exported, made);
        let by_link = store.get_by_key_links(&made).await.unwrap();
        assert!(by_link.iter().all(Option::is_some));
    }

    /// After a rotation no wrapped value in the store opens under the old master key, and a
    /// handle still holding the old key cannot add keys.
    #[tokio::test]
    async fn after_rotation_the_old_key_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let store = open(&path);
        let stale = open(&path);
        let values: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
        let requests: Vec<_> = values.iter().map(|v| scope("g", v.as_bytes(), 0)).collect();
        store.get_or_create(&requests).await.unwrap();
        store
            .rotate_master(&MasterKey::from_bytes(KEY_B))
            .await
            .unwrap();
        let old = MasterKey::from_bytes(KEY_A).cipher();
        type Row = ([u8; 16], LookupHash, i64, i64, Vec<u8>);
        let (rows, secret): (Vec<Row>, Vec<u8>) = {
            let conn = store.inner.lock();
            let mut stmt = conn
                .prepare(
                    "SELECT key_link, scope_hash, window_start_ms, key_id, wrapped_key FROM keys",
                )
                .unwrap();
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let secret = conn
                .query_row(
                    "SELECT value FROM meta WHERE name = 'store_secret'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            (rows, secret)
        };
        assert_eq!(rows.len(), 30);
        for (link, scope, window, key_id, wrapped) in &rows {
            let aad = data_key_aad(
                DATA_KEY_AAD,
                &Uuid::from_bytes(*link),
                scope,
                *window,
                *key_id as u32,
            );
            assert!(unseal(&old, wrapped, &aad).is_none());
        }
        assert!(unseal(&old, &secret, STORE_SECRET_AAD).is_none());
        let err = stale
            .get_or_create(&[scope("g", b"new", 0)])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("rotated"), "{err}");
    }

    #[test]
    fn refuses_foreign_databases_and_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("other.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = EmbeddedKeyStore::open(&foreign, key(KEY_A)).unwrap_err();
        assert!(err.to_string().contains("not a keylink key store"), "{err}");

        let path = dir.path().join("keys.db");
        drop(open(&path));
        Connection::open(&path)
            .unwrap()
            .execute_batch("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
            .unwrap();
        let err = EmbeddedKeyStore::open(&path, key(KEY_A)).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
