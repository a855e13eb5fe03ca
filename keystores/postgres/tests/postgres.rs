//! The Postgres key store against a real PostgreSQL server (started by `cargo xtask test`, or
//! `cargo xtask postgres start`): the conformance suite, each check in a fresh database, and the
//! store's own checks. Fails loudly when the server is not there.

use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keylink_core::connector::BuildContext;
use keylink_core::error::ErrorKind;
use keylink_core::keystore::envelope::MasterKey;
use keylink_core::keystore::{KeyStore, KeyStoreConfig};
use keylink_core::testkit::keystore::{DumpFn, KeyStoreHarness, OpenFn, OpenWithMasterFn};
use keylink_keystore_postgres::PostgresKeyStore;

const URL_ENV: &str = "KEYLINK_TEST_POSTGRES_URL";
const DB_ENV: &str = "KEYLINK_TEST_PG_DB";
const KEY_ENV: &str = "KEYLINK_TEST_PG_KEY";

fn admin_url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| {
        panic!(
            "{URL_ENV} is not set: run the tests with `cargo xtask test`, or start a server with \
             `cargo xtask postgres start` and export what it prints"
        )
    })
}

fn config_for(db: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::from_str(&admin_url()).expect("a valid test URL");
    c.dbname(db);
    c
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
    tokio::spawn(conn);
    client
}

/// A fresh, empty database.
async fn fresh_db() -> String {
    let mut id = [0u8; 8];
    keylink_core::crypto::fill_random(&mut id).unwrap();
    let name = format!("ks_{}", u64::from_le_bytes(id));
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    name
}

fn master() -> MasterKey {
    MasterKey::from_bytes([0x6c; 32])
}

async fn open(db: &str, master: MasterKey) -> keylink_core::Result<PostgresKeyStore> {
    PostgresKeyStore::connect(config_for(db), master, 4).await
}

/// Every value of every table of `db`: bytea columns as raw bytes, others as text.
async fn dump(db: String) -> keylink_core::Result<Vec<u8>> {
    let (client, conn) = config_for(&db)
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| keylink_core::Error::key_store(e.to_string()))?;
    tokio::spawn(conn);
    let columns = client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text \
             FROM information_schema.columns WHERE table_schema = 'public'",
            &[],
        )
        .await
        .map_err(|e| keylink_core::Error::key_store(e.to_string()))?;
    let mut bytes = Vec::new();
    for c in &columns {
        let (table, column, ty): (String, String, String) = (c.get(0), c.get(1), c.get(2));
        let (sql, raw) = if ty == "bytea" {
            (format!("SELECT \"{column}\" FROM \"{table}\""), true)
        } else {
            (format!("SELECT \"{column}\"::text FROM \"{table}\""), false)
        };
        for row in client
            .query(&sql, &[])
            .await
            .map_err(|e| keylink_core::Error::key_store(e.to_string()))?
        {
            // NULL (a column added by a migration, an empty audit field) adds nothing
            if raw {
                bytes.extend(row.get::<_, Option<Vec<u8>>>(0).unwrap_or_default());
            } else {
                bytes.extend(
                    row.get::<_, Option<String>>(0)
                        .unwrap_or_default()
                        .into_bytes(),
                );
            }
            bytes.push(0);
        }
    }
    Ok(bytes)
}

async fn harness() -> KeyStoreHarness {
    let db = fresh_db().await;
    let store: Arc<dyn KeyStore> = Arc::new(open(&db, master()).await.unwrap());
    let d = db.clone();
    let open_again: OpenFn = Arc::new(move || {
        let d = d.clone();
        Box::pin(async move { Ok(Arc::new(open(&d, master()).await?) as Arc<dyn KeyStore>) })
    });
    let d = db.clone();
    let dump_fn: DumpFn = Arc::new(move || Box::pin(dump(d.clone())));
    let env = vec![
        (DB_ENV.to_string(), db.clone()),
        (KEY_ENV.to_string(), BASE64.encode(master().expose())),
    ];
    let d = db.clone();
    let open_with: OpenWithMasterFn = Arc::new(move |key| {
        let d = d.clone();
        Box::pin(async move { Ok(Arc::new(open(&d, key).await?) as Arc<dyn KeyStore>) })
    });
    KeyStoreHarness::new(store, open_again, dump_fn, env).with_master(master(), open_with)
}

async fn open_child() -> Arc<dyn KeyStore> {
    let db = std::env::var(DB_ENV).expect("the parent names the database");
    let key = MasterKey::from_base64(&std::env::var(KEY_ENV).unwrap(), "the test key").unwrap();
    Arc::new(open(&db, key).await.expect("open the postgres store"))
}

keylink_core::keystore_conformance_tests!(harness, open_child);

fn run<F: std::future::Future>(f: F) -> F::Output {
    keylink_core::testkit::block_on(f)
}

#[test]
fn wrong_master_key_and_newer_schema_are_refused() {
    run(async {
        let db = fresh_db().await;
        drop(open(&db, master()).await.unwrap());
        let err = open(&db, MasterKey::from_bytes([1; 32])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyStore);
        assert!(
            err.to_string().contains("master key does not match"),
            "{err}"
        );
        let (client, conn) = config_for(&db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .execute(
                "UPDATE keylink_meta SET value = $1 WHERE name = 'schema_version'",
                &[&99i64.to_be_bytes().as_slice()],
            )
            .await
            .unwrap();
        let err = open(&db, master()).await.unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    });
}

#[test]
fn workers_starting_together_create_one_schema_and_secret() {
    run(async {
        let db = fresh_db().await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let db = db.clone();
            tasks.spawn(async move { open(&db, master()).await.unwrap() });
        }
        let mut stores = Vec::new();
        while let Some(s) = tasks.join_next().await {
            stores.push(s.unwrap());
        }
        let a = stores[0].lookup_key().scope_hash("g", b"v");
        assert!(
            stores
                .iter()
                .all(|s| s.lookup_key().scope_hash("g", b"v") == a)
        );
    });
}

#[test]
fn the_password_never_shows() {
    run(async {
        // The URL's password: not in a connection error, Debug or describe() (the unit tests cover
        // PGPASSWORD).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("postgres://kl:pw-in-url-XYZ@127.0.0.1:{port}/keys?connect_timeout=2");
        // The master key from a file (not KEYLINK_MASTER_KEY: tests must not change the
        // environment of a multi-threaded process).
        let mut id = [0u8; 8];
        keylink_core::crypto::fill_random(&mut id).unwrap();
        let dir = std::env::temp_dir().join(format!("keylink-pg-test-{}", u64::from_le_bytes(id)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("master-key"), BASE64.encode([7u8; 32])).unwrap();
        let ctx = BuildContext {
            base_dir: dir.clone(),
        };
        let json = |url: &str| serde_json::json!({"type": "postgres", "url": url, "master_key_file": "master-key"});
        let config: Box<dyn KeyStoreConfig> = serde_json::from_value(json(&url)).unwrap();
        let err = config.build(&ctx).await.unwrap_err();
        let shown = format!("{err} {err:?} {config:?}");
        assert!(!shown.contains("pw-in-url-XYZ"), "{shown}");
        assert!(
            shown.contains(&format!("postgres://kl@127.0.0.1:{port}/keys")),
            "{shown}"
        );

        // A working store built from the config: describe() names it without a password.
        let db = fresh_db().await;
        let mut url = url::parse(&admin_url(), &db);
        url = url.replace("postgres@", "postgres:pw-in-url-XYZ@");
        let config: Box<dyn KeyStoreConfig> = serde_json::from_value(json(&url)).unwrap();
        let store = config.build(&ctx).await.unwrap();
        let shown = format!("{} {store:?}", store.describe());
        assert!(!shown.contains("pw-in-url-XYZ"), "{shown}");
        assert!(shown.contains(&db), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

mod url {
    /// `admin` with its database replaced by `db`.
    pub fn parse(admin: &str, db: &str) -> String {
        let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
        format!("{base}/{db}")
    }
}

/// A store of schema version 1 is migrated on connect: its keys stay readable and rotate; a
/// handle still holding the old master key after a rotation cannot add keys.
#[test]
fn version_1_stores_are_migrated_and_stale_handles_refused() {
    run(async {
        use keylink_core::keystore::{KeyLabels, ScopeRequest};
        let db = fresh_db().await;
        let store = open(&db, master()).await.unwrap();
        let l = store.lookup_key().clone();
        let req = |v: &[u8]| ScopeRequest {
            scope: l.scope_hash("g", v),
            window_start_ms: 0,
            expires_at_ms: 1,
            subject: Some(l.subject_hash(b"s")),
            labels: Arc::new(KeyLabels::default()),
        };
        let link = store.get_or_create(&[req(b"v")]).await.unwrap()[0]
            .key
            .key_link;
        drop(store);
        let (client, conn) = config_for(&db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "DROP TABLE keylink_key_groups; DROP TABLE keylink_tombstones; \
                 DROP TABLE keylink_audit_log; ALTER TABLE keylink_keys DROP COLUMN group_hash; \
                 ALTER TABLE keylink_keys DROP COLUMN policy_id; \
                 ALTER TABLE keylink_keys DROP COLUMN master_fp;",
            )
            .await
            .unwrap();
        client
            .execute(
                "UPDATE keylink_meta SET value = $1 WHERE name = 'schema_version'",
                &[&1i64.to_be_bytes().as_slice()],
            )
            .await
            .unwrap();
        let store = open(&db, master()).await.unwrap();
        let stale = open(&db, master()).await.unwrap();
        assert!(store.get_by_key_links(&[link]).await.unwrap()[0].is_some());
        let new = MasterKey::from_bytes([9; 32]);
        assert_eq!(store.rotate_master(&new).await.unwrap().rewrapped, 1);
        let reopened = open(&db, new).await.unwrap();
        assert!(reopened.get_by_key_links(&[link]).await.unwrap()[0].is_some());
        let err = stale.get_or_create(&[req(b"other")]).await.unwrap_err();
        assert!(err.to_string().contains("rotated"), "{err}");
    });
}
