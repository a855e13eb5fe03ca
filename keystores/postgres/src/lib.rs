//! The PostgreSQL key store: one store shared by many workers (SPEC §10).
//!
//! ```yaml
//! key_store: { type: postgres, url: "postgres://keylink@db.internal:5432/keylink", master_key_file: /run/secrets/keylink-master-key }
//! ```
//!
//! # What is stored
//!
//! The same as in the embedded store, in tables created (and versioned) on first use:
//!
//! - `keylink_keys`: data keys wrapped with AES-256-GCM under the 32-byte **master key**
//!   ([`keylink_core::keystore::envelope`]), the associated data binding each wrapped key to its
//!   row (key link, scope hash, window start, key id); looked up by `(scope_hash,
//!   window_start_ms)`, unique.
//! - `keylink_subject_keys`: links (subject hash, key link), deleted with their key.
//! - Since schema version 2 (migrated from 1 on connect): per key its group hash, policy id and
//!   the fingerprint of the master key wrapping it; `keylink_key_groups` (group names sealed
//!   under the master key), `keylink_tombstones` (forgotten scopes), `keylink_audit_log`
//!   (operations, counts, times, subject hashes — never values). Master key rotation is
//!   crash-safe like the embedded store's (see `PostgresKeyStore::rotate`).
//! - `keylink_meta`: the schema version, the **store secret** (wrapped under the master key) the
//!   engine's [`LookupKey`] is made from, and a verifier of the master key.
//!
//! Plaintext keyField values and data-subject ids never reach the store (see
//! [`keylink_core::keystore`]).
//!
//! # Settings
//!
//! - `url`: a libpq-style URL or `key=value` string. The password comes from the URL or, when it
//!   has none, from `PGPASSWORD`; it is never logged (descriptions show the URL without it). TLS
//!   follows `sslmode` (default `prefer`: TLS when the server offers it), through rustls with the
//!   system's root certificates.
//! - The master key: `KEYLINK_MASTER_KEY` (base64 of 32 bytes), else `master_key_file`. Unlike the
//!   embedded store, a shared store never creates a master key on its own: every worker must be
//!   given the same one.
//! - `pool_size`: connections per process (default 8).
//!
//! # Concurrency and durability
//!
//! [`KeyStore::get_or_create`] first reads the existing keys of a batch (no transaction, no
//! fsync when everything exists). For the rest it runs one short transaction, with the scopes
//! sorted so that concurrent workers take their locks in one order: `INSERT … ON CONFLICT DO
//! NOTHING RETURNING` for the new keys, then a separate `SELECT` for the scopes another worker
//! created meanwhile (a row committed after the `INSERT`'s snapshot is visible only to a new
//! statement), then the subject links. The commit returns after PostgreSQL made it durable
//! (`synchronous_commit` as configured on the server; keep it `on`). Deadlocks, serialization
//! failures and a key deleted between the statements are retried with bounded, jittered backoff.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use hmac::Mac;
use keylink_core::Sensitive;
use keylink_core::connector::BuildContext;
use keylink_core::crypto::{KeyMaterial, fill_random};
use keylink_core::error::{Error, ErrorKind, Result};
use keylink_core::keystore::envelope::{
    Aes256Gcm, MASTER_KEY_ENV, MasterCiphers as Ciphers, MasterKey, RandomPool, data_key_aad,
    master_key_verifier, new_data_key, seal, seal_with, unseal,
};
use keylink_core::keystore::{
    AuditEntry, AuditOperation, DataKey, ExportedKey, Forgotten, GroupHash, KeyInfo, KeyLabels,
    KeyStats, KeyStore, KeyStoreConfig, LOOKUP_HASH_LEN, LookupKey, ResolvedKey, RotationReport,
    ScopeRequest, SubjectHash, SubjectKeys, master_key_fingerprint,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The schema version this code writes and reads; version 1 stores are migrated on connect
/// (`MIGRATION_2`).
pub const SCHEMA_VERSION: i64 = 2;

/// Rows re-wrapped per transaction by a master key rotation.
const ROTATION_BATCH: i64 = 500;

/// Associated data of the next master key, sealed under the current one while a rotation runs.
const NEXT_MASTER_AAD: &[u8] = b"keylink/postgres/next-master-key/v1";

/// Prefix of the associated data of a sealed group name.
const GROUP_NAME_AAD: &[u8] = b"keylink/postgres/group-name/v1";

/// How many times a batch is retried after a deadlock or serialization failure.
const MAX_RETRIES: u32 = 8;

/// Associated data of the wrapped store secret.
const STORE_SECRET_AAD: &[u8] = b"keylink/postgres/store-secret/v1";
/// Label of the master key verifier.
const VERIFIER_LABEL: &[u8] = b"keylink/postgres/master-key-verifier/v1";
/// Prefix of the associated data of a wrapped data key.
const DATA_KEY_AAD: &[u8] = b"keylink/postgres/data-key/v1";

/// The advisory lock that serialises schema creation across workers ("keylink" + 1).
const SCHEMA_LOCK: i64 = 0x6b65_796c_696e_6b01;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keylink_meta (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS keylink_keys (
    key_link        bytea PRIMARY KEY,
    scope_hash      bytea NOT NULL,
    window_start_ms bigint NOT NULL,
    key_id          integer NOT NULL,
    expires_at_ms   bigint NOT NULL,
    wrapped_key     bytea NOT NULL,
    created_at_ms   bigint NOT NULL,
    UNIQUE (scope_hash, window_start_ms)
);
CREATE INDEX IF NOT EXISTS keylink_keys_expires_at ON keylink_keys (expires_at_ms);
CREATE TABLE IF NOT EXISTS keylink_subject_keys (
    subject_hash bytea NOT NULL,
    key_link     bytea NOT NULL REFERENCES keylink_keys (key_link) ON DELETE CASCADE,
    PRIMARY KEY (subject_hash, key_link)
);
CREATE INDEX IF NOT EXISTS keylink_subject_keys_key_link ON keylink_subject_keys (key_link);
";

/// Schema version 2 (key lifecycle, SPEC §9): per key its group (hashed; the name sealed in
/// `keylink_key_groups`), policy and the fingerprint of the master key wrapping it; tombstones of
/// forgotten scopes; the audit log.
const MIGRATION_2: &str = "
ALTER TABLE keylink_keys ADD COLUMN IF NOT EXISTS group_hash bytea;
ALTER TABLE keylink_keys ADD COLUMN IF NOT EXISTS policy_id text;
ALTER TABLE keylink_keys ADD COLUMN IF NOT EXISTS master_fp bigint;
CREATE INDEX IF NOT EXISTS keylink_keys_group ON keylink_keys (group_hash, created_at_ms);
CREATE INDEX IF NOT EXISTS keylink_keys_master_fp ON keylink_keys (master_fp);
CREATE TABLE IF NOT EXISTS keylink_key_groups (
    group_hash  bytea PRIMARY KEY,
    sealed_name bytea NOT NULL,
    master_fp   bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS keylink_tombstones (
    scope_hash      bytea NOT NULL,
    window_start_ms bigint NOT NULL,
    forgotten_at_ms bigint NOT NULL,
    PRIMARY KEY (scope_hash, window_start_ms)
);
CREATE TABLE IF NOT EXISTS keylink_audit_log (
    id           bigserial PRIMARY KEY,
    at_ms        bigint NOT NULL,
    operation    text NOT NULL,
    keys         bigint NOT NULL,
    subject_hash bytea,
    group_hash   bytea,
    detail       text NOT NULL
);
";

/// The keys of scopes, with whether each scope has a tombstone (so the common path needs no
/// second round trip).
const SELECT_SCOPES: &str = "SELECT k.key_link, k.scope_hash, k.window_start_ms, k.key_id, \
     k.expires_at_ms, k.wrapped_key, k.master_fp, EXISTS (SELECT 1 FROM keylink_tombstones t \
     WHERE t.scope_hash = k.scope_hash AND t.window_start_ms = k.window_start_ms) \
     FROM keylink_keys k \
     JOIN unnest($1::bytea[], $2::int8[]) AS r(h, w) \
     ON k.scope_hash = r.h AND k.window_start_ms = r.w";

const INSERT_KEYS: &str = "INSERT INTO keylink_keys \
     (key_link, scope_hash, window_start_ms, key_id, expires_at_ms, wrapped_key, created_at_ms, \
     group_hash, policy_id, master_fp) \
     SELECT l, h, w, i, e, k, c, g, p, $10 FROM unnest($1::bytea[], $2::bytea[], $3::int8[], \
     $4::int4[], $5::int8[], $6::bytea[], $7::int8[], $8::bytea[], $9::text[]) \
     AS t(l, h, w, i, e, k, c, g, p) ORDER BY h, w \
     ON CONFLICT (scope_hash, window_start_ms) DO NOTHING RETURNING key_link";

/// Checks, in a transaction that writes keys, that the master key is still the store's (a
/// rotation's last step takes this row `FOR UPDATE`, so the two serialise): a worker still on
/// the old key must not add keys the new key cannot open.
const LOCK_VERIFIER: &str =
    "SELECT value FROM keylink_meta WHERE name = 'master_key_verifier' FOR SHARE";

const INSERT_LINKS: &str = "INSERT INTO keylink_subject_keys (subject_hash, key_link) \
     SELECT * FROM unnest($1::bytea[], $2::bytea[]) AS t(s, l) ORDER BY s, l \
     ON CONFLICT DO NOTHING";

type ScopeId = ([u8; LOOKUP_HASH_LEN], i64);
/// Keys found or made by one attempt, the scopes created, the scopes with a tombstone.
type Resolved = (
    HashMap<ScopeId, Arc<DataKey>>,
    HashSet<ScopeId>,
    HashSet<ScopeId>,
);

fn default_pool_size() -> usize {
    8
}

/// `key_store: { type: postgres, url: …, master_key_file: …, pool_size: 8 }`
#[derive(Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresKeyStoreConfig {
    /// The connection URL (`postgres://user[:password]@host[:port]/db[?sslmode=…]`) or
    /// `key=value` string. Never shown: descriptions drop the password.
    pub url: Sensitive<String>,
    /// File holding the base64 master key; `KEYLINK_MASTER_KEY` wins over it. One of the two is
    /// required.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Connections per process.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

impl fmt::Debug for PostgresKeyStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = parse_url(self.url.expose())
            .map(|c| describe_config(&c))
            .unwrap_or_else(|_| "**REDACTED**".into());
        f.debug_struct("PostgresKeyStoreConfig")
            .field("url", &shown)
            .field("master_key_file", &self.master_key_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Parses a connection string; the error never repeats it (it may hold a password).
fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url).map_err(|_| {
        Error::config(
            "key_store.url is not a valid PostgreSQL connection URL \
             (postgres://user@host:port/database, or key=value pairs)",
        )
    })
}

/// `postgres://user@host:port/db`, without the password.
fn describe_config(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            match c.get_ports().get(i).or(c.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}{}/{}",
        c.get_user().map(|u| format!("{u}@")).unwrap_or_default(),
        hosts.join(","),
        c.get_dbname().unwrap_or("")
    )
}

impl PostgresKeyStoreConfig {
    /// The connection settings, with `PGPASSWORD` filled in when the URL has no password.
    fn connection(&self, pgpassword: Option<String>) -> Result<tokio_postgres::Config> {
        let mut c = parse_url(self.url.expose())?;
        if c.get_password().is_none()
            && let Some(p) = pgpassword
        {
            c.password(p);
        }
        Ok(c)
    }

    fn master_key(&self, ctx: &BuildContext) -> Result<MasterKey> {
        if let Some(value) = std::env::var_os(MASTER_KEY_ENV) {
            let value = Zeroizing::new(value.into_string().map_err(|_| {
                Error::config(format!(
                    "the environment variable {MASTER_KEY_ENV} is not valid UTF-8"
                ))
            })?);
            return MasterKey::from_base64(
                &value,
                &format!("the environment variable {MASTER_KEY_ENV}"),
            );
        }
        let Some(file) = &self.master_key_file else {
            return Err(Error::config(format!(
                "key_store: the postgres key store needs the master key: set {MASTER_KEY_ENV} or \
                 key_store.master_key_file (every worker must use the same key)"
            )));
        };
        let file = ctx.resolve_path(file);
        let what = format!("the master key file {}", file.display());
        let text = Zeroizing::new(
            std::fs::read_to_string(&file)
                .map_err(|e| Error::config(format!("cannot read {what}: {e}")))?,
        );
        MasterKey::from_base64(&text, &what)
    }
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::KeyStore,
    name: "postgres",
    description: "a PostgreSQL database shared by many workers",
    example: r#"{ "type": "postgres", "url": "postgres://keylink@db:5432/keylink" }"#,
    schemes: &[],
    from_url: None,
    schema: keylink_core::schema::of::<PostgresKeyStoreConfig>,
});

#[async_trait]
#[typetag::serde(name = "postgres")]
impl KeyStoreConfig for PostgresKeyStoreConfig {
    fn validate(&self) -> Result<()> {
        let c = parse_url(self.url.expose())?;
        if c.get_hosts().is_empty() {
            return Err(Error::config("key_store.url names no host"));
        }
        if self.pool_size == 0 {
            return Err(Error::config("key_store.pool_size must be at least 1"));
        }
        if let Some(file) = &self.master_key_file
            && file.as_os_str().is_empty()
        {
            return Err(Error::config(
                "key_store.master_key_file: the path is empty",
            ));
        }
        Ok(())
    }

    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn KeyStore>> {
        self.validate()?;
        let connection = self.connection(std::env::var("PGPASSWORD").ok())?;
        let master = self.master_key(ctx)?;
        let store = PostgresKeyStore::connect(connection, master, self.pool_size).await?;
        Ok(Arc::new(store))
    }
}

/// The PostgreSQL key store. See the [crate documentation](crate).
pub struct PostgresKeyStore {
    pool: Pool,
    ciphers: std::sync::RwLock<Ciphers>,
    lookup: LookupKey,
    shown: String,
}

impl fmt::Debug for PostgresKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresKeyStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// rustls on the aws-lc provider with the system's root certificates, for servers that offer
/// (or, with `sslmode=require`, must use) TLS.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::debug!("no system root certificates: TLS to the key store will fail to verify");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::new(ErrorKind::Other, format!("cannot set up TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Whether retrying the batch may succeed.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::FOREIGN_KEY_VIOLATION
    )
}

/// An error of the store: the server's message and code (never the statement's parameters nor
/// the `DETAIL`, which can quote row values).
fn db_error(shown: &str, what: &str, e: &tokio_postgres::Error) -> Error {
    let reason = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    let kind = if e.is_closed() || e.as_db_error().is_none() || is_retryable(e) {
        ErrorKind::Transient
    } else {
        ErrorKind::KeyStore
    };
    Error::new(kind, format!("key store {shown}: {what}: {reason}"))
}

/// Associated data of a sealed group name.
fn group_aad(hash: &[u8]) -> Vec<u8> {
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

/// Why one attempt at a batch failed.
enum Attempt {
    /// Try again after a pause.
    Retry(String),
    /// Give up.
    Fail(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Fail(e)
    }
}

impl PostgresKeyStore {
    /// Connects, creates the schema and the store secret on first use (under an advisory lock, so
    /// workers starting together agree), checks the schema version and the master key.
    pub async fn connect(
        config: tokio_postgres::Config,
        master: MasterKey,
        pool_size: usize,
    ) -> Result<Self> {
        let shown = describe_config(&config);
        let manager = Manager::from_config(
            config,
            tls()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| Error::key_store(format!("key store {shown}: {e}")))?;
        let store = PostgresKeyStore {
            pool,
            ciphers: std::sync::RwLock::new(Ciphers::one(&master, VERIFIER_LABEL)),
            lookup: LookupKey::new(&[0; LOOKUP_HASH_LEN])?,
            shown,
        };
        let secret = store.initialise(&master).await?;
        let lookup = LookupKey::new(secret.as_slice())?;
        tracing::debug!(url = %store.shown, "opened the postgres key store");
        Ok(PostgresKeyStore { lookup, ..store })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            let reason = match &e {
                deadpool_postgres::PoolError::Backend(b) => match b.as_db_error() {
                    Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                    None => b.to_string(),
                },
                other => other.to_string(),
            };
            Error::new(
                ErrorKind::Transient,
                format!("key store {}: cannot connect: {reason}", self.shown),
            )
        })
    }

    fn err<'a>(&'a self, what: &'a str) -> impl Fn(tokio_postgres::Error) -> Error + 'a {
        move |e| db_error(&self.shown, what, &e)
    }

    async fn initialise(&self, master: &MasterKey) -> Result<Zeroizing<[u8; LOOKUP_HASH_LEN]>> {
        let mut client = self.client().await?;
        let err = self.err("cannot create or read the schema");
        let tx = client.transaction().await.map_err(&err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(&err)?;
        tx.batch_execute(SCHEMA).await.map_err(&err)?;
        let rows = tx
            .query("SELECT name, value FROM keylink_meta", &[])
            .await
            .map_err(&err)?;
        let meta: HashMap<String, Vec<u8>> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .collect();
        let wrap = master.cipher();
        let secret = if meta.is_empty() {
            let mut secret = Zeroizing::new([0u8; LOOKUP_HASH_LEN]);
            fill_random(secret.as_mut())?;
            let wrapped = seal(&wrap, secret.as_slice(), STORE_SECRET_AAD)?;
            let verifier = master_key_verifier(master, VERIFIER_LABEL)
                .finalize()
                .into_bytes()
                .to_vec();
            let rows: [(&str, Vec<u8>); 4] = [
                // version 1's schema; the migration below brings it up to date
                ("schema_version", 1i64.to_be_bytes().to_vec()),
                ("created_at_ms", now_ms().to_be_bytes().to_vec()),
                ("master_key_verifier", verifier),
                ("store_secret", wrapped),
            ];
            for (name, value) in rows {
                tx.execute(
                    "INSERT INTO keylink_meta (name, value) VALUES ($1, $2)",
                    &[&name, &value],
                )
                .await
                .map_err(&err)?;
            }
            tracing::info!(url = %self.shown, "created the postgres key store's schema");
            secret
        } else {
            self.unlock(&meta, master)?
        };
        let version = meta
            .get("schema_version")
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(1, i64::from_be_bytes);
        if version < 2 {
            tx.batch_execute(MIGRATION_2).await.map_err(&err)?;
            tx.execute(
                "UPDATE keylink_keys SET master_fp = $1 WHERE master_fp IS NULL",
                &[&master_key_fingerprint(master)],
            )
            .await
            .map_err(&err)?;
            tx.execute(
                "UPDATE keylink_meta SET value = $1 WHERE name = 'schema_version'",
                &[&2i64.to_be_bytes().as_slice()],
            )
            .await
            .map_err(&err)?;
            tracing::info!(url = %self.shown, "migrated the postgres key store to schema version 2");
        }
        if let Some(sealed) = meta.get("rotation_next_key") {
            // A rotation began and did not finish: keys are under this key or the next one.
            let plain = unseal(&wrap, sealed, NEXT_MASTER_AAD).ok_or_else(|| {
                Error::key_store(format!(
                    "key store {} is damaged: the next master key of a pending rotation does not \
                     decrypt",
                    self.shown
                ))
            })?;
            let next = MasterKey::from_bytes(plain.as_slice().try_into().map_err(|_| {
                Error::key_store(format!(
                    "key store {} is damaged: the next master key is malformed",
                    self.shown
                ))
            })?);
            self.ciphers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .by_fp
                .insert(master_key_fingerprint(&next), next.cipher());
        }
        tx.commit().await.map_err(&err)?;
        Ok(secret)
    }

    fn unlock(
        &self,
        meta: &HashMap<String, Vec<u8>>,
        master: &MasterKey,
    ) -> Result<Zeroizing<[u8; LOOKUP_HASH_LEN]>> {
        let corrupt = |what: &str| {
            Error::key_store(format!(
                "key store {} is damaged: {what} is missing or malformed",
                self.shown
            ))
        };
        let version = meta
            .get("schema_version")
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_be_bytes)
            .ok_or_else(|| corrupt("the schema version"))?;
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Err(Error::key_store(format!(
                "key store {} has schema version {version}; this keylink reads versions 1 to \
                 {SCHEMA_VERSION}",
                self.shown
            )));
        }
        let verifier = meta
            .get("master_key_verifier")
            .ok_or_else(|| corrupt("the master key verifier"))?;
        if master_key_verifier(master, VERIFIER_LABEL)
            .verify_slice(verifier)
            .is_err()
        {
            return Err(Error::key_store(format!(
                "the master key does not match key store {}",
                self.shown
            )));
        }
        let wrapped = meta
            .get("store_secret")
            .ok_or_else(|| corrupt("the store secret"))?;
        let plain = unseal(&master.cipher(), wrapped, STORE_SECRET_AAD).ok_or_else(|| {
            Error::key_store(format!(
                "key store {} is damaged: the store secret does not decrypt under its master key",
                self.shown
            ))
        })?;
        let secret: [u8; LOOKUP_HASH_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("the store secret"))?;
        Ok(Zeroizing::new(secret))
    }

    /// Decrypts a row of `keylink_keys` (key_link, scope_hash, window, key_id, expires, wrapped).
    fn unwrap_row(&self, row: &tokio_postgres::Row) -> Result<(ScopeId, Arc<DataKey>)> {
        let link: Vec<u8> = row.get(0);
        let scope: Vec<u8> = row.get(1);
        let window: i64 = row.get(2);
        let key_id: i32 = row.get(3);
        let expires: i64 = row.get(4);
        let wrapped: Vec<u8> = row.get(5);
        let fp: Option<i64> = row.get(6);
        let damaged = |link: &str| {
            Error::key_store(format!(
                "key store {}: the key {link} cannot be decrypted (its row was altered or is \
                 damaged)",
                self.shown
            ))
        };
        let link = Uuid::from_slice(&link).map_err(|_| damaged("with a malformed link"))?;
        let scope: [u8; LOOKUP_HASH_LEN] = scope
            .as_slice()
            .try_into()
            .map_err(|_| damaged(&link.to_string()))?;
        let key_id = u32::try_from(key_id).map_err(|_| damaged(&link.to_string()))?;
        let aad = data_key_aad(DATA_KEY_AAD, &link, &scope, window, key_id);
        let plain = {
            let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
            // By the fingerprint of the master key the row says wraps it: during a rotation
            // some rows are under the old key and some under the new one.
            let cipher = match fp {
                Some(fp) => ciphers.by_fp.get(&fp).ok_or_else(|| {
                    Error::key_store(format!(
                        "key store {}: the key {link} is wrapped under another master key than \
                         this process holds (a rotation finished meanwhile? restart with the new \
                         key)",
                        self.shown
                    ))
                })?,
                None => ciphers.current().1,
            };
            unseal(cipher, &wrapped, &aad).ok_or_else(|| damaged(&link.to_string()))?
        };
        let material = KeyMaterial::from_slice(&plain).map_err(|_| damaged(&link.to_string()))?;
        Ok((
            (scope, window),
            Arc::new(DataKey {
                key_link: link,
                key_id,
                material,
                window_start_ms: window,
                expires_at_ms: expires,
            }),
        ))
    }

    /// The hash of `group`, storing its name sealed under the current master key the first time
    /// it is seen.
    async fn ensure_group(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        group: &str,
        fp: i64,
        cipher: &Aes256Gcm,
    ) -> Result<Vec<u8>> {
        let hash = self.lookup.group_hash(group).as_bytes().to_vec();
        let err = self.err("cannot store a key group");
        let exists = tx
            .query_opt(
                "SELECT 1 FROM keylink_key_groups WHERE group_hash = $1",
                &[&hash],
            )
            .await
            .map_err(&err)?
            .is_some();
        if !exists {
            let sealed = seal(cipher, group.as_bytes(), &group_aad(&hash))?;
            tx.execute(
                "INSERT INTO keylink_key_groups (group_hash, sealed_name, master_fp) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&hash, &sealed, &fp],
            )
            .await
            .map_err(&err)?;
        }
        Ok(hash)
    }

    /// Every group's name by hash (groups are few).
    async fn group_names<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
    ) -> Result<HashMap<Vec<u8>, String>> {
        let rows = client
            .query(
                "SELECT group_hash, sealed_name, master_fp FROM keylink_key_groups",
                &[],
            )
            .await
            .map_err(self.err("cannot read key groups"))?;
        let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::with_capacity(rows.len());
        for r in &rows {
            let hash: Vec<u8> = r.get(0);
            let sealed: Vec<u8> = r.get(1);
            let fp: i64 = r.get(2);
            let name = ciphers
                .by_fp
                .get(&fp)
                .and_then(|c| unseal(c, &sealed, &group_aad(&hash)))
                .and_then(|p| String::from_utf8(p.to_vec()).ok())
                .ok_or_else(|| {
                    Error::key_store(format!(
                        "key store {}: a key group's name does not decrypt",
                        self.shown
                    ))
                })?;
            out.insert(hash, name);
        }
        Ok(out)
    }

    /// The scopes among `ids` that were forgotten before.
    async fn tombstoned<'a>(
        &self,
        ids: impl Iterator<Item = &'a ScopeId>,
    ) -> Result<HashSet<ScopeId>> {
        let (hs, ws): (Vec<&[u8]>, Vec<i64>) = ids.map(|(h, w)| (h.as_slice(), *w)).unzip();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT t.scope_hash, t.window_start_ms FROM keylink_tombstones t \
                 JOIN unnest($1::bytea[], $2::int8[]) AS r(h, w) \
                 ON t.scope_hash = r.h AND t.window_start_ms = r.w",
                &[&hs, &ws],
            )
            .await
            .map_err(self.err("cannot read tombstones"))?;
        let mut out = HashSet::with_capacity(rows.len());
        for r in &rows {
            if let Ok(h) = <[u8; LOOKUP_HASH_LEN]>::try_from(r.get::<_, &[u8]>(0)) {
                out.insert((h, r.get::<_, i64>(1)));
            }
        }
        Ok(out)
    }

    async fn insert_audit(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        e: &AuditEntry,
    ) -> Result<()> {
        let group = match &e.group {
            Some(g) => {
                let (fp, cipher) = {
                    let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
                    let (fp, c) = ciphers.current();
                    (fp, c.clone())
                };
                Some(self.ensure_group(tx, g, fp, &cipher).await?)
            }
            None => None,
        };
        let subject = e.subject.map(|s| s.as_bytes().to_vec());
        tx.execute(
            "INSERT INTO keylink_audit_log (at_ms, operation, keys, subject_hash, group_hash, \
             detail) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &e.at_ms,
                &e.operation.as_str(),
                &i64::try_from(e.keys).unwrap_or(i64::MAX),
                &subject,
                &group,
                &e.detail,
            ],
        )
        .await
        .map_err(self.err("cannot append to the audit log"))?;
        Ok(())
    }

    /// Re-wraps every key under `new`; crash-safe for the same reasons as the embedded store's
    /// rotation, each step one transaction that leaves every key readable:
    ///
    /// 1. the new key is sealed under the current one into `keylink_meta`, with its
    ///    fingerprint: a handle opened with the current key can from then on read rows under
    ///    either key;
    /// 2. rows are re-wrapped in batches of [`ROTATION_BATCH`], wrapped key and `master_fp`
    ///    changed together per row;
    /// 3. the last transaction takes the verifier row `FOR UPDATE` (key-creating transactions
    ///    take it `FOR SHARE`, so none adds an old-key row behind it), re-wraps what is left,
    ///    the group names and the store secret, replaces the verifier and deletes the sealed new
    ///    key. From its commit on the store opens with the new key only.
    ///
    /// A call after an interruption resumes; one with another new key while a rotation is
    /// pending is refused.
    async fn rotate(&self, new: &MasterKey) -> Result<RotationReport> {
        let new_fp = master_key_fingerprint(new);
        let new_cipher = new.cipher();
        let mut report = RotationReport::default();
        let err = self.err("cannot rotate the master key");
        let mut client = self.client().await?;
        // Step 1.
        {
            let tx = client.transaction().await.map_err(&err)?;
            let verifier: Vec<u8> = tx
                .query_one(
                    "SELECT value FROM keylink_meta WHERE name = 'master_key_verifier' \
                     FOR UPDATE",
                    &[],
                )
                .await
                .map_err(&err)?
                .get(0);
            if master_key_verifier(new, VERIFIER_LABEL)
                .verify_slice(&verifier)
                .is_ok()
            {
                report.already_done = true;
                return Ok(report);
            }
            let pending = tx
                .query_opt(
                    "SELECT value FROM keylink_meta WHERE name = 'rotation_next_fp'",
                    &[],
                )
                .await
                .map_err(&err)?
                .and_then(|r| <[u8; 8]>::try_from(r.get::<_, &[u8]>(0)).ok())
                .map(i64::from_be_bytes);
            match pending {
                Some(fp) if fp == new_fp => report.resumed = true,
                Some(_) => {
                    return Err(Error::key_store(format!(
                        "key store {}: a rotation to another master key began and did not \
                         finish; run it again with that key file to finish it first",
                        self.shown
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
                        "INSERT INTO keylink_meta (name, value) VALUES \
                         ('rotation_next_key', $1), ('rotation_next_fp', $2)",
                        &[&sealed, &new_fp.to_be_bytes().as_slice()],
                    )
                    .await
                    .map_err(&err)?;
                }
            }
            tx.commit().await.map_err(&err)?;
            self.ciphers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .by_fp
                .insert(new_fp, new_cipher.clone());
        }
        // Step 2.
        loop {
            let tx = client.transaction().await.map_err(&err)?;
            let n = self.rewrap_batch(&tx, new_fp, &new_cipher).await?;
            tx.commit().await.map_err(&err)?;
            report.rewrapped += n;
            if n == 0 {
                break;
            }
        }
        // Step 3.
        let tx = client.transaction().await.map_err(&err)?;
        tx.execute(
            "SELECT value FROM keylink_meta WHERE name = 'master_key_verifier' FOR UPDATE",
            &[],
        )
        .await
        .map_err(&err)?;
        loop {
            let n = self.rewrap_batch(&tx, new_fp, &new_cipher).await?;
            report.rewrapped += n;
            if n == 0 {
                break;
            }
        }
        let names = self.group_names(&*tx).await?;
        for (hash, name) in &names {
            let sealed = seal(&new_cipher, name.as_bytes(), &group_aad(hash))?;
            tx.execute(
                "UPDATE keylink_key_groups SET sealed_name = $1, master_fp = $2 \
                 WHERE group_hash = $3",
                &[&sealed, &new_fp, hash],
            )
            .await
            .map_err(&err)?;
        }
        let wrapped: Vec<u8> = tx
            .query_one(
                "SELECT value FROM keylink_meta WHERE name = 'store_secret'",
                &[],
            )
            .await
            .map_err(&err)?
            .get(0);
        let secret = {
            let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
            unseal(ciphers.current().1, &wrapped, STORE_SECRET_AAD).ok_or_else(|| {
                Error::key_store(format!(
                    "key store {}: the store secret does not decrypt",
                    self.shown
                ))
            })?
        };
        let rewrapped_secret = seal(&new_cipher, secret.as_slice(), STORE_SECRET_AAD)?;
        let verifier = master_key_verifier(new, VERIFIER_LABEL)
            .finalize()
            .into_bytes()
            .to_vec();
        for (name, value) in [
            ("store_secret", &rewrapped_secret),
            ("master_key_verifier", &verifier),
        ] {
            tx.execute(
                "UPDATE keylink_meta SET value = $1 WHERE name = $2",
                &[value, &name],
            )
            .await
            .map_err(&err)?;
        }
        tx.execute(
            "DELETE FROM keylink_meta WHERE name IN ('rotation_next_key', 'rotation_next_fp')",
            &[],
        )
        .await
        .map_err(&err)?;
        let total: i64 = tx
            .query_one("SELECT count(*) FROM keylink_keys", &[])
            .await
            .map_err(&err)?
            .get(0);
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
        )
        .await?;
        tx.commit().await.map_err(&err)?;
        let mut ciphers = self.ciphers.write().unwrap_or_else(|e| e.into_inner());
        ciphers.by_fp.retain(|fp, _| *fp == new_fp);
        ciphers.current = new_fp;
        ciphers.verifier = verifier;
        Ok(report)
    }

    /// Re-wraps up to [`ROTATION_BATCH`] keys not yet under `new_fp`; returns how many.
    async fn rewrap_batch(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        new_fp: i64,
        new: &Aes256Gcm,
    ) -> Result<u64> {
        let err = self.err("cannot re-wrap keys");
        let rows = tx
            .query(
                "SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms, \
                 wrapped_key, master_fp FROM keylink_keys \
                 WHERE master_fp IS DISTINCT FROM $1 LIMIT $2 FOR UPDATE",
                &[&new_fp, &ROTATION_BATCH],
            )
            .await
            .map_err(&err)?;
        let mut random = RandomPool::new();
        let (mut links, mut wrapped) = (Vec::with_capacity(rows.len()), Vec::new());
        for r in &rows {
            let ((scope, window), key) = self.unwrap_row(r)?;
            let aad = data_key_aad(DATA_KEY_AAD, &key.key_link, &scope, window, key.key_id);
            wrapped.push(seal_with(new, key.material.expose(), &aad, &mut random)?);
            links.push(key.key_link.as_bytes().to_vec());
        }
        if !links.is_empty() {
            tx.execute(
                "UPDATE keylink_keys k SET wrapped_key = u.w, master_fp = $3 \
                 FROM unnest($1::bytea[], $2::bytea[]) AS u(l, w) WHERE k.key_link = u.l",
                &[&links, &wrapped, &new_fp],
            )
            .await
            .map_err(&err)?;
        }
        Ok(rows.len() as u64)
    }

    /// One attempt at a batch. `ids`: the distinct scopes, sorted, with their expiry.
    async fn attempt(
        &self,
        ids: &BTreeMap<ScopeId, (i64, Arc<KeyLabels>)>,
        links: &BTreeSet<([u8; LOOKUP_HASH_LEN], ScopeId)>,
    ) -> std::result::Result<Resolved, Attempt> {
        let retry = |what: &str| {
            let what = what.to_owned();
            move |e: tokio_postgres::Error| {
                if is_retryable(&e) {
                    Attempt::Retry(db_error(&self.shown, &what, &e).to_string())
                } else {
                    Attempt::Fail(db_error(&self.shown, &what, &e))
                }
            }
        };
        let mut client = self.client().await?;
        let hashes: Vec<&[u8]> = ids.keys().map(|(h, _)| h.as_slice()).collect();
        let windows: Vec<i64> = ids.keys().map(|(_, w)| *w).collect();
        let select = client
            .prepare_cached(SELECT_SCOPES)
            .await
            .map_err(retry("cannot read keys"))?;
        let mut found = HashMap::with_capacity(ids.len());
        let mut tombstoned = HashSet::new();
        for row in client
            .query(&select, &[&hashes, &windows])
            .await
            .map_err(retry("cannot read keys"))?
        {
            let (id, key) = self.unwrap_row(&row)?;
            if row.get::<_, bool>(7) {
                tombstoned.insert(id);
            }
            found.insert(id, key);
        }
        let mut created = HashSet::new();
        if found.len() == ids.len() && links.is_empty() {
            return Ok((found, created, tombstoned));
        }

        let tx = client
            .transaction()
            .await
            .map_err(retry("cannot start a transaction"))?;
        let missing: Vec<(&ScopeId, &(i64, Arc<KeyLabels>))> = ids
            .iter()
            .filter(|(id, _)| !found.contains_key(*id))
            .collect();
        if !missing.is_empty() {
            let verifier: Vec<u8> = tx
                .query_one(LOCK_VERIFIER, &[])
                .await
                .map_err(retry("cannot read the master key verifier"))?
                .get(0);
            let (fp, cipher) = {
                let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
                if ciphers.verifier != verifier {
                    return Err(Attempt::Fail(Error::key_store(format!(
                        "the master key of key store {} was rotated by another process: \
                         restart with the new master key",
                        self.shown
                    ))));
                }
                let (fp, c) = ciphers.current();
                (fp, c.clone())
            };
            let mut groups: HashMap<&str, Vec<u8>> = HashMap::new();
            for (_, (_, labels)) in &missing {
                if !groups.contains_key(labels.group.as_str()) {
                    let hash = self
                        .ensure_group(&tx, &labels.group, fp, &cipher)
                        .await
                        .map_err(Attempt::Fail)?;
                    groups.insert(labels.group.as_str(), hash);
                }
            }
            let mut random = RandomPool::new();
            let mut new_keys: HashMap<Uuid, (ScopeId, Arc<DataKey>)> = HashMap::new();
            let n = missing.len();
            let (mut l, mut h, mut w, mut i, mut e, mut k, mut c) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut g, mut p) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let now = now_ms();
            for (id, (expires, labels)) in &missing {
                let expires = &expires;
                let (material, key_id, link) = new_data_key(&mut random)?;
                let aad = data_key_aad(DATA_KEY_AAD, &link, &id.0, id.1, key_id);
                let wrapped = seal_with(&cipher, material.expose(), &aad, &mut random)?;
                g.push(groups[labels.group.as_str()].as_slice());
                p.push(labels.policy_id.as_str());
                l.push(link.as_bytes().to_vec());
                h.push(id.0.as_slice());
                w.push(id.1);
                i.push(key_id as i32);
                e.push(**expires);
                k.push(wrapped);
                c.push(now);
                new_keys.insert(
                    link,
                    (
                        **id,
                        Arc::new(DataKey {
                            key_link: link,
                            key_id,
                            material,
                            window_start_ms: id.1,
                            expires_at_ms: **expires,
                        }),
                    ),
                );
            }
            let insert = tx
                .prepare_cached(INSERT_KEYS)
                .await
                .map_err(retry("cannot store new keys"))?;
            let params: [&(dyn ToSql + Sync); 10] = [&l, &h, &w, &i, &e, &k, &c, &g, &p, &fp];
            for row in tx
                .query(&insert, &params)
                .await
                .map_err(retry("cannot store new keys"))?
            {
                let link = Uuid::from_slice(row.get::<_, &[u8]>(0))
                    .map_err(|_| Attempt::Fail(Error::key_store("a malformed key link")))?;
                let (id, key) = new_keys
                    .remove(&link)
                    .ok_or_else(|| Attempt::Fail(Error::key_store("an unexpected key link")))?;
                created.insert(id);
                found.insert(id, key);
            }
            if !new_keys.is_empty() {
                // Created by another worker since our first read: a new statement sees them.
                let (hs, ws): (Vec<&[u8]>, Vec<i64>) = new_keys
                    .values()
                    .map(|((h, w), _)| (h.as_slice(), *w))
                    .unzip();
                let select = tx
                    .prepare_cached(SELECT_SCOPES)
                    .await
                    .map_err(retry("cannot read keys"))?;
                for row in tx
                    .query(&select, &[&hs, &ws])
                    .await
                    .map_err(retry("cannot read keys"))?
                {
                    let (id, key) = self.unwrap_row(&row)?;
                    if row.get::<_, bool>(7) {
                        tombstoned.insert(id);
                    }
                    found.insert(id, key);
                }
            }
            if found.len() != ids.len() {
                return Err(Attempt::Retry(
                    "a key was deleted while it was being resolved".into(),
                ));
            }
        }
        if !links.is_empty() {
            let subjects: Vec<&[u8]> = links.iter().map(|(s, _)| s.as_slice()).collect();
            let keys: Vec<&[u8]> = links
                .iter()
                .map(|(_, id)| found[id].key_link.as_bytes().as_slice())
                .collect();
            let insert = tx
                .prepare_cached(INSERT_LINKS)
                .await
                .map_err(retry("cannot store subject links"))?;
            tx.execute(&insert, &[&subjects, &keys])
                .await
                .map_err(retry("cannot store subject links"))?;
        }
        tx.commit().await.map_err(retry("cannot commit new keys"))?;
        Ok((found, created, tombstoned))
    }
}

#[async_trait]
impl KeyStore for PostgresKeyStore {
    fn lookup_key(&self) -> &LookupKey {
        &self.lookup
    }

    #[tracing::instrument(skip_all, fields(scopes = scopes.len()))]
    async fn get_or_create(&self, scopes: &[ScopeRequest]) -> Result<Vec<ResolvedKey>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: BTreeMap<ScopeId, (i64, Arc<KeyLabels>)> = BTreeMap::new();
        let mut links = BTreeSet::new();
        for s in scopes {
            let id = (*s.scope.as_bytes(), s.window_start_ms);
            ids.entry(id)
                .or_insert_with(|| (s.expires_at_ms, Arc::clone(&s.labels)));
            if let Some(subject) = &s.subject {
                links.insert((*subject.as_bytes(), id));
            }
        }
        let mut pause = Duration::from_millis(5);
        let mut attempt = 0;
        let (found, mut created, mut tombstoned) = loop {
            match self.attempt(&ids, &links).await {
                Ok(done) => break done,
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(why)) if attempt < MAX_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, reason = %why, "retrying a key-store batch");
                    let mut jitter = [0u8; 1];
                    let _ = fill_random(&mut jitter);
                    tokio::time::sleep(pause + pause * u32::from(jitter[0]) / 255).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(Attempt::Retry(why)) => {
                    return Err(Error::new(
                        ErrorKind::Transient,
                        format!("{why} (gave up after {MAX_RETRIES} retries)"),
                    ));
                }
            }
        };
        if !created.is_empty() {
            // a new key may replace a forgotten one
            tombstoned.extend(self.tombstoned(created.iter()).await?);
        }
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

    async fn get_by_key_links(&self, links: &[Uuid]) -> Result<Vec<Option<Arc<DataKey>>>> {
        if links.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let wanted: Vec<&[u8]> = links.iter().map(|l| l.as_bytes().as_slice()).collect();
        let rows = client
            .query(
                "SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms, wrapped_key, \
                 master_fp FROM keylink_keys WHERE key_link = ANY($1::bytea[])",
                &[&wanted],
            )
            .await
            .map_err(self.err("cannot read keys"))?;
        let mut by_link = HashMap::with_capacity(rows.len());
        for row in &rows {
            let (_, key) = self.unwrap_row(row)?;
            by_link.insert(key.key_link, key);
        }
        Ok(links.iter().map(|l| by_link.get(l).cloned()).collect())
    }

    async fn subject_key_links(&self, subject: &SubjectHash) -> Result<Vec<Uuid>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key_link FROM keylink_subject_keys WHERE subject_hash = $1",
                &[&subject.as_bytes().as_slice()],
            )
            .await
            .map_err(self.err("cannot read subject links"))?;
        rows.iter()
            .map(|r| {
                Uuid::from_slice(r.get::<_, &[u8]>(0)).map_err(|_| {
                    Error::key_store(format!("key store {}: a malformed key link", self.shown))
                })
            })
            .collect()
    }

    async fn forget_subject(&self, subject: &SubjectHash) -> Result<u64> {
        Ok(self.forget(subject).await?.key_links.len() as u64)
    }

    async fn purge_expired(&self, now: i64) -> Result<u64> {
        let mut client = self.client().await?;
        let err = self.err("cannot delete keys");
        let tx = client.transaction().await.map_err(&err)?;
        let deleted = tx
            .execute("DELETE FROM keylink_keys WHERE expires_at_ms < $1", &[&now])
            .await
            .map_err(&err)?;
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
        )
        .await?;
        tx.commit().await.map_err(&err)?;
        Ok(deleted)
    }

    async fn forget(&self, subject: &SubjectHash) -> Result<Forgotten> {
        let at = now_ms();
        let mut client = self.client().await?;
        let err = self.err("cannot forget a subject");
        let tx = client.transaction().await.map_err(&err)?;
        let rows = tx
            .query(
                "SELECT k.key_link, k.scope_hash, k.window_start_ms FROM keylink_keys k \
                 JOIN keylink_subject_keys s ON s.key_link = k.key_link \
                 WHERE s.subject_hash = $1 ORDER BY k.key_link FOR UPDATE OF k",
                &[&subject.as_bytes().as_slice()],
            )
            .await
            .map_err(&err)?;
        let mut links = Vec::with_capacity(rows.len());
        let (mut hs, mut ws): (Vec<Vec<u8>>, Vec<i64>) = (Vec::new(), Vec::new());
        for r in &rows {
            links.push(Uuid::from_slice(r.get::<_, &[u8]>(0)).map_err(|_| {
                Error::key_store(format!("key store {}: a malformed key link", self.shown))
            })?);
            hs.push(r.get(1));
            ws.push(r.get(2));
        }
        tx.execute(
            "INSERT INTO keylink_tombstones (scope_hash, window_start_ms, forgotten_at_ms) \
             SELECT h, w, $3 FROM unnest($1::bytea[], $2::int8[]) AS t(h, w) \
             ON CONFLICT (scope_hash, window_start_ms) DO UPDATE SET forgotten_at_ms = $3",
            &[&hs, &ws, &at],
        )
        .await
        .map_err(&err)?;
        // The links of every subject to these keys go with them (ON DELETE CASCADE).
        let wanted: Vec<&[u8]> = links.iter().map(|l| l.as_bytes().as_slice()).collect();
        tx.execute(
            "DELETE FROM keylink_keys WHERE key_link = ANY($1::bytea[])",
            &[&wanted],
        )
        .await
        .map_err(&err)?;
        self.insert_audit(
            &tx,
            &AuditEntry {
                at_ms: at,
                operation: AuditOperation::Forgotten,
                keys: links.len() as u64,
                subject: Some(*subject),
                group: None,
                detail: String::new(),
            },
        )
        .await?;
        tx.commit().await.map_err(&err)?;
        Ok(Forgotten {
            subject: *subject,
            key_links: links,
            at_ms: at,
        })
    }

    async fn subject_keys(&self, subject: &SubjectHash) -> Result<Vec<KeyInfo>> {
        let client = self.client().await?;
        let names = self.group_names(&**client).await?;
        let rows = client
            .query(
                "SELECT k.key_link, k.window_start_ms, k.expires_at_ms, k.created_at_ms, \
                 k.group_hash, k.policy_id FROM keylink_keys k JOIN keylink_subject_keys s \
                 ON s.key_link = k.key_link WHERE s.subject_hash = $1 \
                 ORDER BY k.window_start_ms, k.key_link",
                &[&subject.as_bytes().as_slice()],
            )
            .await
            .map_err(self.err("cannot read keys"))?;
        rows.iter()
            .map(|r| {
                Ok(KeyInfo {
                    key_link: Uuid::from_slice(r.get::<_, &[u8]>(0)).map_err(|_| {
                        Error::key_store(format!("key store {}: a malformed key link", self.shown))
                    })?,
                    window_start_ms: r.get(1),
                    expires_at_ms: r.get(2),
                    created_at_ms: r.get(3),
                    group: r
                        .get::<_, Option<Vec<u8>>>(4)
                        .and_then(|g| names.get(&g).cloned()),
                    policy_id: r.get(5),
                })
            })
            .collect()
    }

    async fn list_subjects(&self) -> Result<Vec<SubjectKeys>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT subject_hash, count(*) FROM keylink_subject_keys GROUP BY subject_hash \
                 ORDER BY subject_hash",
                &[],
            )
            .await
            .map_err(self.err("cannot read subject links"))?;
        rows.iter()
            .map(|r| {
                let hash: [u8; LOOKUP_HASH_LEN] =
                    r.get::<_, &[u8]>(0).try_into().map_err(|_| {
                        Error::key_store(format!("key store {}: a malformed subject", self.shown))
                    })?;
                Ok(SubjectKeys {
                    subject: SubjectHash::from_bytes(hash),
                    keys: r.get::<_, i64>(1).max(0) as u64,
                })
            })
            .collect()
    }

    async fn key_stats(&self) -> Result<Vec<KeyStats>> {
        let client = self.client().await?;
        let names = self.group_names(&**client).await?;
        let rows = client
            .query(
                "SELECT group_hash, window_start_ms, policy_id, count(*), min(expires_at_ms) \
                 FROM keylink_keys GROUP BY group_hash, window_start_ms, policy_id",
                &[],
            )
            .await
            .map_err(self.err("cannot read keys"))?;
        let mut out: Vec<KeyStats> = rows
            .iter()
            .map(|r| KeyStats {
                group: r
                    .get::<_, Option<Vec<u8>>>(0)
                    .and_then(|g| names.get(&g).cloned()),
                window_start_ms: r.get(1),
                policy_id: r.get(2),
                keys: r.get::<_, i64>(3).max(0) as u64,
                earliest_expiry_ms: r.get(4),
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn count_expired(&self, now: i64) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM keylink_keys WHERE expires_at_ms < $1",
                &[&now],
            )
            .await
            .map_err(self.err("cannot read keys"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn export_keys(
        &self,
        group: &GroupHash,
        created_since_ms: Option<i64>,
    ) -> Result<Vec<ExportedKey>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms, \
                 wrapped_key, master_fp, policy_id, created_at_ms FROM keylink_keys \
                 WHERE group_hash = $1 AND created_at_ms >= $2 ORDER BY created_at_ms, key_link",
                &[
                    &group.as_bytes().as_slice(),
                    &created_since_ms.unwrap_or(i64::MIN),
                ],
            )
            .await
            .map_err(self.err("cannot read keys"))?;
        rows.iter()
            .map(|r| {
                let (_, key) = self.unwrap_row(r)?;
                Ok(ExportedKey {
                    key,
                    policy_id: r.get::<_, Option<String>>(7).unwrap_or_default(),
                    created_at_ms: r.get::<_, i64>(8),
                })
            })
            .collect()
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let mut client = self.client().await?;
        let err = self.err("cannot append to the audit log");
        let tx = client.transaction().await.map_err(&err)?;
        self.insert_audit(&tx, entry).await?;
        tx.commit().await.map_err(&err)
    }

    async fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        let client = self.client().await?;
        let names = self.group_names(&**client).await?;
        let rows = client
            .query(
                "SELECT at_ms, operation, keys, subject_hash, group_hash, detail \
                 FROM keylink_audit_log ORDER BY id",
                &[],
            )
            .await
            .map_err(self.err("cannot read the audit log"))?;
        rows.iter()
            .map(|r| {
                let op: String = r.get(1);
                let subject = match r.get::<_, Option<Vec<u8>>>(3) {
                    None => None,
                    Some(s) => Some(SubjectHash::from_bytes(s.as_slice().try_into().map_err(
                        |_| {
                            Error::key_store(format!(
                                "key store {}: a malformed subject",
                                self.shown
                            ))
                        },
                    )?)),
                };
                Ok(AuditEntry {
                    at_ms: r.get(0),
                    operation: AuditOperation::parse(&op).ok_or_else(|| {
                        Error::key_store(format!(
                            "key store {}: an unknown audit operation {op:?}",
                            self.shown
                        ))
                    })?,
                    keys: r.get::<_, i64>(2).max(0) as u64,
                    subject,
                    group: r
                        .get::<_, Option<Vec<u8>>>(4)
                        .map(|g| names.get(&g).cloned().unwrap_or_default()),
                    detail: r.get(5),
                })
            })
            .collect()
    }

    async fn rotate_master(&self, new: &MasterKey) -> Result<RotationReport> {
        self.rotate(new).await
    }

    fn describe(&self) -> String {
        format!("postgres key store at {}", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_registered_strict_and_redacted() {
        let config: Box<dyn KeyStoreConfig> = serde_json::from_str(
            r#"{"type":"postgres","url":"postgres://kl:s3cr3t-pw@db.example:5433/keys"}"#,
        )
        .unwrap();
        config.validate().unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(
            shown.contains("postgres://kl@db.example:5433/keys"),
            "{shown}"
        );
        assert!(
            serde_json::from_str::<Box<dyn KeyStoreConfig>>(
                r#"{"type":"postgres","url":"postgres://h/d","pool":1}"#
            )
            .is_err()
        );
        let bad: Box<dyn KeyStoreConfig> = serde_json::from_str(
            r#"{"type":"postgres","url":"postgres://kl:s3cr3t-pw@h:notaport/d"}"#,
        )
        .unwrap();
        let err = bad.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(!format!("{bad:?}").contains("s3cr3t"));
        let zero: Box<dyn KeyStoreConfig> =
            serde_json::from_str(r#"{"type":"postgres","url":"postgres://h/d","pool_size":0}"#)
                .unwrap();
        assert!(zero.validate().is_err());
    }

    #[test]
    fn pgpassword_fills_in_only_a_missing_password() {
        let config = PostgresKeyStoreConfig {
            url: Sensitive::new("postgres://kl@h/d".into()),
            master_key_file: None,
            pool_size: 1,
        };
        let c = config.connection(Some("from-env".into())).unwrap();
        assert_eq!(c.get_password(), Some(b"from-env".as_slice()));
        assert!(!describe_config(&c).contains("from-env"));
        let config = PostgresKeyStoreConfig {
            url: Sensitive::new("postgres://kl:in-url@h/d".into()),
            ..config
        };
        let c = config.connection(Some("from-env".into())).unwrap();
        assert_eq!(c.get_password(), Some(b"in-url".as_slice()));
    }
}
