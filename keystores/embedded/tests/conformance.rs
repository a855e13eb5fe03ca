//! The key-store conformance suite on the embedded store: each check on a fresh database in a
//! temporary directory.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keylink_core::keystore::KeyStore;
use keylink_core::testkit::keystore::KeyStoreHarness;
use keylink_keystore_embedded::{EmbeddedKeyStore, MasterKey, MasterKeySource};

const DB_ENV: &str = "KEYLINK_TEST_EMBEDDED_DB";
const KEY_ENV: &str = "KEYLINK_TEST_EMBEDDED_KEY";

fn master() -> [u8; 32] {
    [0x5a; 32]
}

fn open(path: PathBuf) -> Arc<dyn KeyStore> {
    let key = MasterKeySource::Key(MasterKey::from_bytes(master()));
    Arc::new(EmbeddedKeyStore::open(&path, key).expect("open the embedded store"))
}

async fn harness() -> KeyStoreHarness {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("keys.db");
    let store = open(path.clone());
    let p = path.clone();
    let open_again: keylink_core::testkit::keystore::OpenFn = Arc::new(move || {
        let p = p.clone();
        Box::pin(async move { Ok(open(p)) })
    });
    let p = path.clone();
    let dump: keylink_core::testkit::keystore::DumpFn = Arc::new(move || {
        let p = p.clone();
        Box::pin(async move {
            let mut bytes = std::fs::read(&p)?;
            for suffix in ["-wal", "-journal"] {
                if let Ok(more) = std::fs::read(format!("{}{suffix}", p.display())) {
                    bytes.extend(more);
                }
            }
            Ok(bytes)
        })
    });
    let env = vec![
        (DB_ENV.to_string(), path.display().to_string()),
        (KEY_ENV.to_string(), BASE64.encode(master())),
    ];
    let p = path.clone();
    let open_with: keylink_core::testkit::keystore::OpenWithMasterFn = Arc::new(move |key| {
        let p = p.clone();
        Box::pin(async move {
            let store: Arc<dyn KeyStore> =
                Arc::new(EmbeddedKeyStore::open(&p, MasterKeySource::Key(key))?);
            Ok(store)
        })
    });
    KeyStoreHarness::new(store, open_again, dump, env)
        .with_master(MasterKey::from_bytes(master()), open_with)
        .with_guard(dir)
}

async fn open_child() -> Arc<dyn KeyStore> {
    let path = std::env::var(DB_ENV).expect("the parent names the database");
    let key = std::env::var(KEY_ENV).expect("the parent names the key");
    let key = MasterKey::from_base64(&key, "the test key").expect("a key");
    Arc::new(
        EmbeddedKeyStore::open(path.as_ref(), MasterKeySource::Key(key))
            .expect("open the embedded store"),
    )
}

keylink_core::keystore_conformance_tests!(harness, open_child);
