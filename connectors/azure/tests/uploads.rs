//! How the Azure connector uploads and authenticates, against Azurite: staged blocks in flight
//! and visible only at commit, the single-PUT path for small blobs, abort and drop leaving no
//! blob, and the ways to authenticate (minted account SAS, a given SAS, a connection string,
//! `AZURE_STORAGE_CONNECTION_STRING` alone) — with Azurite checking every signature.

mod emulator;

use std::time::Duration;

use azure_storage_blob::models::BlockListType;
use emulator::{ACCOUNT, KEY, config, fresh_store};
use keylink_connector_azure::{AccountSas, AzureConfig, AzureCredentials, AzureStore};
use keylink_core::connector::{ConnectorConfig, Sink, Source, read_all};
use keylink_core::{Bytes, ErrorKind, Sensitive};

const MIB: usize = 1 << 20;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

async fn write_chunks(w: &mut Box<dyn keylink_core::ObjectWriter>, bytes: &[u8], chunk: usize) {
    for c in bytes.chunks(chunk) {
        w.write(Bytes::copy_from_slice(c)).await.expect("write");
    }
}

/// The (uncommitted, committed) block counts of a blob name.
async fn blocks(store: &AzureStore, name: &str) -> (usize, usize) {
    let list = store
        .client()
        .blob_client(name)
        .block_blob_client()
        .get_block_list(BlockListType::All, None)
        .await
        .expect("get the block list")
        .into_model()
        .expect("parse the block list");
    (
        list.uncommitted_blocks.map_or(0, |b| b.len()),
        list.committed_blocks.map_or(0, |b| b.len()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn large_blobs_are_staged_in_blocks_visible_only_at_commit() {
    let store = fresh_store("blocks")
        .await
        .with_block_size(MIB)
        .with_concurrent_blocks(2);
    let bytes = data(5 * MIB + 17, 7);
    let mut w = store.create("out/big.bin").await.unwrap();
    write_chunks(&mut w, &bytes, MIB / 3).await;
    // blocks are staged as they fill; the blob does not exist
    assert!(store.list("").await.unwrap().is_empty());
    w.finish().await.unwrap();
    assert_eq!(blocks(&store, "out/big.bin").await, (6, 0));
    assert!(store.list("").await.unwrap().is_empty());
    assert_eq!(
        store.open("out/big.bin").await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    w.commit().await.unwrap();
    assert_eq!(blocks(&store, "out/big.bin").await, (0, 6));
    let listed = store.list("out/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, Some(bytes.len() as u64));
    assert_eq!(read_all(&store, "out/big.bin").await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn small_blobs_are_one_put_at_commit() {
    let store = fresh_store("small").await;
    let mut w = store.create("k.csv").await.unwrap();
    w.write(Bytes::from_static(b"id,email\n")).await.unwrap();
    w.finish().await.unwrap();
    assert!(store.list("").await.unwrap().is_empty());
    w.commit().await.unwrap();
    assert_eq!(read_all(&store, "k.csv").await.unwrap(), b"id,email\n");
    assert_eq!(
        blocks(&store, "k.csv").await,
        (0, 0),
        "a Put Blob has no block list"
    );
    // the listing carries a version (the ETag) that changes when the blob is rewritten
    let before = store.list("").await.unwrap()[0].version.clone();
    assert!(before.is_some());
    let mut w = store.create("k.csv").await.unwrap();
    w.write(Bytes::from_static(b"id,email,x\n")).await.unwrap();
    w.commit().await.unwrap();
    let after = store.list("").await.unwrap()[0].version.clone();
    assert!(after.is_some() && after != before, "{before:?} {after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_and_drop_leave_no_blob() {
    let store = fresh_store("abort").await.with_block_size(MIB);
    let bytes = data(3 * MIB + 5, 3);

    let mut w = store.create("a.bin").await.unwrap();
    write_chunks(&mut w, &bytes, MIB).await;
    w.finish().await.unwrap();
    w.abort().await.unwrap();

    let mut w = store.create("b.bin").await.unwrap();
    write_chunks(&mut w, &bytes, MIB).await;
    drop(w);

    // an aborted overwrite keeps the old blob
    let mut w = store.create("c.bin").await.unwrap();
    w.write(Bytes::from_static(b"old")).await.unwrap();
    w.commit().await.unwrap();
    let mut w = store.create("c.bin").await.unwrap();
    write_chunks(&mut w, &bytes, MIB).await;
    w.abort().await.unwrap();

    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(listed, ["c.bin"]);
    assert_eq!(read_all(&store, "c.bin").await.unwrap(), b"old");
}

/// A SAS token for the dev account, signed with `key`, expiring at `expiry`.
fn sas(key: &[u8], expiry: &str) -> String {
    AccountSas {
        account: ACCOUNT,
        permissions: "rwdlac",
        services: "b",
        resource_types: "sco",
        start: "",
        expiry,
        ip: "",
        protocol: "",
        version: keylink_connector_azure::SAS_VERSION,
    }
    .token(key)
}

fn dev_key() -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(KEY)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn azurite_checks_our_signatures() {
    let store = fresh_store("sig").await;
    let container = store.container().to_string();
    let mut w = store.create("x.csv").await.unwrap();
    w.write(Bytes::from_static(b"a\n")).await.unwrap();
    w.commit().await.unwrap();

    // a wrong account key: every request is refused, and the key never shows
    let wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let mut c = config(&container);
    c.credentials = Some(AzureCredentials::AccountKey(Sensitive::new(
        wrong_key.into(),
    )));
    let bad = c.build_store().await.unwrap();
    let e = bad.list("").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("(HTTP 403)"), "{e}");
    assert!(!e.to_string().contains(wrong_key), "{e}");
    assert!(!format!("{c:?} {bad:?}").contains(wrong_key));

    // a SAS token we sign and pass as `sas_token`: accepted while valid …
    let future = "2099-01-01T00:00:00Z";
    let mut c = config(&container);
    let token = sas(&dev_key(), future);
    c.credentials = Some(AzureCredentials::SasToken(Sensitive::new(token.clone())));
    let by_sas = c.build_store().await.unwrap();
    assert_eq!(read_all(&by_sas, "x.csv").await.unwrap(), b"a\n");
    let sig = token.split("sig=").nth(1).unwrap();
    assert!(!format!("{c:?} {by_sas:?}").contains(sig));
    // … refused once expired, and when signed with another key
    for token in [
        sas(&dev_key(), "2001-01-01T00:00:00Z"),
        sas(b"another key", future),
    ] {
        let mut c = config(&container);
        c.credentials = Some(AzureCredentials::SasToken(Sensitive::new(token)));
        let e = read_all(&c.build_store().await.unwrap(), "x.csv")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_string_alone_is_enough() {
    let endpoint = emulator::endpoint();
    let store = fresh_store("connstr").await;
    let container = store.container().to_string();
    let mut w = store.create("y.csv").await.unwrap();
    w.write(Bytes::from_static(b"b\n")).await.unwrap();
    w.commit().await.unwrap();

    // in the config
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={endpoint};"
    );
    let json = serde_json::json!({
        "type": "azure", "container": container,
        "credentials": { "connection_string": cs },
    });
    let c: Box<dyn ConnectorConfig> = serde_json::from_value(json).unwrap();
    c.validate().unwrap();
    assert!(!format!("{c:?}").contains(KEY));
    let ctx = keylink_core::connector::BuildContext::default();
    let source = c.build_source(&ctx).await.unwrap();
    assert_eq!(read_all(&*source, "y.csv").await.unwrap(), b"b\n");
    assert_eq!(
        c.location(&ctx, "y.csv").unwrap().to_string(),
        format!("az://{ACCOUNT}/{container}/y.csv")
    );

    // from AZURE_STORAGE_CONNECTION_STRING (exported by `cargo xtask test`): no account, no
    // endpoint, no credentials in the config
    let env = std::env::var(keylink_connector_azure::CONNECTION_STRING_ENV).unwrap_or_else(|_| {
        panic!("AZURE_STORAGE_CONNECTION_STRING is not set: run the tests with `cargo xtask test`")
    });
    assert!(
        env.contains(&endpoint),
        "the connection string names the emulator"
    );
    let bare = AzureConfig::new(&container).build_store().await.unwrap();
    assert_eq!(bare.account(), ACCOUNT);
    assert_eq!(read_all(&bare, "y.csv").await.unwrap(), b"b\n");
}
