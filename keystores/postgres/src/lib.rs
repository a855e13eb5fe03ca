//! The PostgreSQL key store: one store shared by many workers (SPEC §10).
//!
//! ```yaml
//! key_store: { type: postgres, url: "postgres://keylink@db.internal:5432/keylink", master_key_file: /run/secrets/keylink-master-key }
//! ```
//!
//! # What is stored
//!
//! The same as in the embedded store, in three tables created (and versioned) on first use:
//!
//! - `keylink_keys`: data keys wrapped with AES-256-GCM under the 32-byte **master key**
//!   ([`keylink_core::keystore::envelope`]), the associated data binding each wrapped key to its
//!   row (key link, scope hash, window start, key id); looked up by `(scope_hash,
//!   window_start_ms)`, unique.
//! - `keylink_subject_keys`: links (subject hash, key link), deleted with their key.
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
use hmac::{Hmac, KeyInit, Mac};
use keylink_core::Sensitive;
use keylink_core::connector::BuildContext;
use keylink_core::crypto::{KeyMaterial, fill_random};
use keylink_core::error::{Error, ErrorKind, Result};
use keylink_core::keystore::envelope::{
    Aes256Gcm, MASTER_KEY_ENV, MasterKey, RandomPool, new_data_key, seal, seal_with, unseal,
};
use keylink_core::keystore::{
    DataKey, KeyStore, KeyStoreConfig, LOOKUP_HASH_LEN, LookupKey, ResolvedKey, ScopeRequest,
    SubjectHash,
};
use sha2::Sha256;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

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

const SELECT_SCOPES: &str = "SELECT k.key_link, k.scope_hash, k.window_start_ms, k.key_id, \
     k.expires_at_ms, k.wrapped_key FROM keylink_keys k \
     JOIN unnest($1::bytea[], $2::int8[]) AS r(h, w) \
     ON k.scope_hash = r.h AND k.window_start_ms = r.w";

const INSERT_KEYS: &str = "INSERT INTO keylink_keys \
     (key_link, scope_hash, window_start_ms, key_id, expires_at_ms, wrapped_key, created_at_ms) \
     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int4[], $5::int8[], \
     $6::bytea[], $7::int8[]) AS t(l, h, w, i, e, k, c) ORDER BY h, w \
     ON CONFLICT (scope_hash, window_start_ms) DO NOTHING RETURNING key_link";

const INSERT_LINKS: &str = "INSERT INTO keylink_subject_keys (subject_hash, key_link) \
     SELECT * FROM unnest($1::bytea[], $2::bytea[]) AS t(s, l) ORDER BY s, l \
     ON CONFLICT DO NOTHING";

type HmacSha256 = Hmac<Sha256>;
type ScopeId = ([u8; LOOKUP_HASH_LEN], i64);

fn default_pool_size() -> usize {
    8
}

/// `key_store: { type: postgres, url: …, master_key_file: …, pool_size: 8 }`
#[derive(Clone, serde::Serialize, serde::Deserialize)]
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
    wrap: Aes256Gcm,
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn master_key_verifier(master: &MasterKey) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(master.expose().as_slice())
        .expect("HMAC accepts any key length")
        .chain_update(VERIFIER_LABEL)
}

/// Associated data of a wrapped data key: binds it to its row. All fields have fixed lengths.
fn data_key_aad(key_link: &Uuid, scope: &[u8], window_start_ms: i64, key_id: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DATA_KEY_AAD.len() + 16 + scope.len() + 8 + 4);
    aad.extend_from_slice(DATA_KEY_AAD);
    aad.extend_from_slice(key_link.as_bytes());
    aad.extend_from_slice(scope);
    aad.extend_from_slice(&window_start_ms.to_be_bytes());
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad
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
        let wrap = master.cipher();
        let store = PostgresKeyStore {
            pool,
            wrap,
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
        let secret = if meta.is_empty() {
            let mut secret = Zeroizing::new([0u8; LOOKUP_HASH_LEN]);
            fill_random(secret.as_mut())?;
            let wrapped = seal(&self.wrap, secret.as_slice(), STORE_SECRET_AAD)?;
            let verifier = master_key_verifier(master).finalize().into_bytes().to_vec();
            let rows: [(&str, Vec<u8>); 4] = [
                ("schema_version", SCHEMA_VERSION.to_be_bytes().to_vec()),
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
        if version != SCHEMA_VERSION {
            return Err(Error::key_store(format!(
                "key store {} has schema version {version}; this keylink reads version \
                 {SCHEMA_VERSION} only",
                self.shown
            )));
        }
        let verifier = meta
            .get("master_key_verifier")
            .ok_or_else(|| corrupt("the master key verifier"))?;
        if master_key_verifier(master).verify_slice(verifier).is_err() {
            return Err(Error::key_store(format!(
                "the master key does not match key store {}",
                self.shown
            )));
        }
        let wrapped = meta
            .get("store_secret")
            .ok_or_else(|| corrupt("the store secret"))?;
        let plain = unseal(&self.wrap, wrapped, STORE_SECRET_AAD).ok_or_else(|| {
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
        let aad = data_key_aad(&link, &scope, window, key_id);
        let plain = unseal(&self.wrap, &wrapped, &aad).ok_or_else(|| damaged(&link.to_string()))?;
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

    /// One attempt at a batch. `ids`: the distinct scopes, sorted, with their expiry.
    async fn attempt(
        &self,
        ids: &BTreeMap<ScopeId, i64>,
        links: &BTreeSet<([u8; LOOKUP_HASH_LEN], ScopeId)>,
    ) -> std::result::Result<(HashMap<ScopeId, Arc<DataKey>>, HashSet<ScopeId>), Attempt> {
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
        for row in client
            .query(&select, &[&hashes, &windows])
            .await
            .map_err(retry("cannot read keys"))?
        {
            let (id, key) = self.unwrap_row(&row)?;
            found.insert(id, key);
        }
        let mut created = HashSet::new();
        if found.len() == ids.len() && links.is_empty() {
            return Ok((found, created));
        }

        let tx = client
            .transaction()
            .await
            .map_err(retry("cannot start a transaction"))?;
        let missing: Vec<(&ScopeId, &i64)> = ids
            .iter()
            .filter(|(id, _)| !found.contains_key(*id))
            .collect();
        if !missing.is_empty() {
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
            let now = now_ms();
            for (id, expires) in &missing {
                let (material, key_id, link) = new_data_key(&mut random)?;
                let aad = data_key_aad(&link, &id.0, id.1, key_id);
                let wrapped = seal_with(&self.wrap, material.expose(), &aad, &mut random)?;
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
            let params: [&(dyn ToSql + Sync); 7] = [&l, &h, &w, &i, &e, &k, &c];
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
        Ok((found, created))
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
        let mut ids: BTreeMap<ScopeId, i64> = BTreeMap::new();
        let mut links = BTreeSet::new();
        for s in scopes {
            let id = (*s.scope.as_bytes(), s.window_start_ms);
            ids.entry(id).or_insert(s.expires_at_ms);
            if let Some(subject) = &s.subject {
                links.insert((*subject.as_bytes(), id));
            }
        }
        let mut pause = Duration::from_millis(5);
        let mut attempt = 0;
        let (found, mut created) = loop {
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
        Ok(scopes
            .iter()
            .map(|s| {
                let id = (*s.scope.as_bytes(), s.window_start_ms);
                ResolvedKey {
                    key: Arc::clone(&found[&id]),
                    // `remove`: only the first request of a duplicated scope reports `created`.
                    created: created.remove(&id),
                    after_forget: false,
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
                "SELECT key_link, scope_hash, window_start_ms, key_id, expires_at_ms, wrapped_key \
                 FROM keylink_keys WHERE key_link = ANY($1::bytea[])",
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
        let client = self.client().await?;
        // The links of every subject to these keys go with them (ON DELETE CASCADE).
        client
            .execute(
                "DELETE FROM keylink_keys WHERE key_link IN \
                 (SELECT key_link FROM keylink_subject_keys WHERE subject_hash = $1)",
                &[&subject.as_bytes().as_slice()],
            )
            .await
            .map_err(self.err("cannot delete keys"))
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM keylink_keys WHERE expires_at_ms < $1",
                &[&now_ms],
            )
            .await
            .map_err(self.err("cannot delete keys"))
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
