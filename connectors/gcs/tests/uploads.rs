//! How the GCS connector uploads, against the emulator: resumable sessions sending aligned chunks
//! and finalised only at commit, the single-request path for small objects, and that abort, drop
//! and failures leave no object behind.

mod emulator;

use std::time::Duration;

use emulator::fresh_store;
use keylink_connector_gcs::{CHUNK_ALIGN, GcsConfig, GcsCredentials};
use keylink_core::connector::{ConnectorConfig, Sink, Source, read_all, write_all};
use keylink_core::{Bytes, ErrorKind, Sensitive};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

async fn write_chunks(w: &mut Box<dyn keylink_core::ObjectWriter>, bytes: &[u8], chunk: usize) {
    for c in bytes.chunks(chunk) {
        w.write(Bytes::copy_from_slice(c)).await.expect("write");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_objects_upload_in_chunks_visible_only_at_commit() {
    let store = fresh_store("chunks").await.with_chunk_size(CHUNK_ALIGN);
    // 5 full chunks, then a tail that is not a multiple of 256 KiB
    let bytes = data(5 * CHUNK_ALIGN + 100_017, 7);
    let mut w = store.create("out/big.bin").await.unwrap();
    write_chunks(&mut w, &bytes, 100_003).await;
    // chunks are on their way, the object does not exist
    assert!(store.list("").await.unwrap().is_empty());
    w.finish().await.unwrap();
    // everything but the tail has arrived; still nothing visible
    assert!(store.list("").await.unwrap().is_empty());
    assert_eq!(
        store.open("out/big.bin").await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    w.commit().await.unwrap();

    let listed = store.list("out/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, Some(bytes.len() as u64));
    assert_eq!(read_all(&store, "out/big.bin").await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_multiples_and_empty_objects_commit() {
    let store = fresh_store("exact").await.with_chunk_size(CHUNK_ALIGN);
    // the tail is empty: commit sends only the size
    for (name, len) in [
        ("two.bin", 2 * CHUNK_ALIGN),
        ("one.bin", CHUNK_ALIGN),
        ("zero.bin", 0),
    ] {
        let bytes = data(len, 3);
        let mut w = store.create(name).await.unwrap();
        write_chunks(&mut w, &bytes, 65_536).await;
        w.finish().await.unwrap();
        assert!(store.list(name).await.unwrap().is_empty(), "{name}");
        w.commit().await.unwrap();
        assert_eq!(read_all(&store, name).await.unwrap(), bytes, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn small_objects_are_one_request_at_commit() {
    let store = fresh_store("small").await;
    let mut w = store.create("k.csv").await.unwrap();
    w.write(Bytes::from_static(b"id,email\n")).await.unwrap();
    w.finish().await.unwrap();
    assert!(store.list("").await.unwrap().is_empty());
    w.commit().await.unwrap();
    assert_eq!(read_all(&store, "k.csv").await.unwrap(), b"id,email\n");
    // and a second commit to the same name replaces it
    write_all(&store, "k.csv", Bytes::from_static(b"id\n"))
        .await
        .unwrap();
    assert_eq!(read_all(&store, "k.csv").await.unwrap(), b"id\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_and_drop_leave_no_object() {
    let store = fresh_store("abort").await.with_chunk_size(CHUNK_ALIGN);
    let bytes = data(3 * CHUNK_ALIGN + 1, 1);

    let mut w = store.create("a.bin").await.unwrap();
    write_chunks(&mut w, &bytes, 100_000).await;
    w.abort().await.unwrap();

    let mut w = store.create("b.bin").await.unwrap();
    write_chunks(&mut w, &bytes, 100_000).await;
    w.finish().await.unwrap();
    w.abort().await.unwrap();

    // dropped: cancelled in the background
    let mut w = store.create("c.bin").await.unwrap();
    write_chunks(&mut w, &bytes, 100_000).await;
    drop(w);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.list("").await.unwrap().is_empty());
    for name in ["a.bin", "b.bin", "c.bin"] {
        assert_eq!(
            store.open(name).await.err().map(|e| e.kind()),
            Some(ErrorKind::NotFound),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_not_found_and_named() {
    let bucket = emulator::unique_bucket("missing");
    let store = emulator::config(&bucket)
        .build_store(&Default::default())
        .await
        .unwrap()
        .with_chunk_size(CHUNK_ALIGN);
    let e = store.list("raw/").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains(&format!("gs://{bucket}/raw/")),
        "{e}"
    );
    let e = store.open("raw/a.csv").await.err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().starts_with("gcs connector: cannot read "),
        "{e}"
    );
    // small: the single request at commit fails
    let mut w = store.create("x.csv").await.unwrap();
    w.write(Bytes::from_static(b"x")).await.unwrap();
    let e = w.commit().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains(&format!("gs://{bucket}/x.csv")),
        "{e}"
    );
    // large: starting the session fails, at the first full chunk
    let mut w = store.create("y.csv").await.unwrap();
    let e = w
        .write(Bytes::from(vec![0u8; CHUNK_ALIGN]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "gcs connector: cannot start the upload of gs://{bucket}/y.csv: "
        )),
        "{e}"
    );
    // no URL (an upload session's URL is a capability) in any message
    assert!(!e.to_string().contains("http://"), "{e}");
    w.abort().await.unwrap();
}

/// The emulator from the environment: only the bucket in the config; the endpoint from
/// `STORAGE_EMULATOR_HOST` (which `cargo xtask test` exports), and then no credentials are looked
/// for.
#[tokio::test(flavor = "multi_thread")]
async fn the_endpoint_comes_from_storage_emulator_host() {
    let store = fresh_store("env").await;
    assert!(
        std::env::var_os("STORAGE_EMULATOR_HOST").is_some(),
        "STORAGE_EMULATOR_HOST is not set: run the tests with `cargo xtask test`"
    );
    let config: Box<dyn ConnectorConfig> = serde_json::from_str(&format!(
        r#"{{"type":"gcs","bucket":"{}"}}"#,
        store.bucket()
    ))
    .unwrap();
    let ctx = Default::default();
    let sink = config.build_sink(&ctx).await.unwrap();
    write_all(&*sink, "env.csv", Bytes::from_static(b"a\n"))
        .await
        .unwrap();
    let source = config.build_source(&ctx).await.unwrap();
    assert_eq!(read_all(&*source, "env.csv").await.unwrap(), b"a\n");
    assert_eq!(
        source.describe("env.csv"),
        format!("gs://{}/env.csv", store.bucket())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_debug_and_errors() {
    // an unusable key (and a token endpoint on a closed local port, should it ever be used)
    let secret = "MIIEvQ-never-print-me";
    let key = format!(
        r#"{{"type":"service_account","client_email":"etl@p.iam.gserviceaccount.com",
            "private_key":"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n",
            "private_key_id":"kid-never-print-me","token_uri":"http://127.0.0.1:9/token"}}"#
    );
    let bucket = emulator::unique_bucket("secret");
    let mut c: GcsConfig = emulator::config(&bucket);
    c.credentials = Some(GcsCredentials::Json(Sensitive::new(key)));
    c.validate().unwrap();
    let store = c.build_store(&Default::default()).await.unwrap();
    let e = store.open("a.csv").await.err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("credentials"), "{e}");
    let shown = format!("{c:?} {store:?} {e} {e:?}");
    for s in [secret, "kid-never-print-me"] {
        assert!(!shown.contains(s), "{shown}");
    }
    // a key file too, relative to the config's folder
    let dir = tempfile_dir();
    std::fs::write(
        dir.join("sa.json"),
        r#"{"type":"service_account","client_email":"e"}"#,
    )
    .unwrap();
    c.credentials = Some(GcsCredentials::File("sa.json".into()));
    let ctx = keylink_core::connector::BuildContext {
        base_dir: dir.clone(),
    };
    let e = c.build_store(&ctx).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(
        e.to_string().contains("private_key") && e.to_string().contains("sa.json"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(emulator::unique_bucket("keylink-gcs-test"));
    std::fs::create_dir_all(&d).unwrap();
    d
}
