//! How the S3 connector uploads, against the emulator: multipart with parts in flight, the
//! single-PUT path for small objects, and that abort, drop and failed uploads leave neither an
//! object nor a pending multipart upload behind.

mod emulator;

use std::time::{Duration, Instant};

use emulator::{fresh_store, pending_uploads};
use keylink_connector_s3::{MIN_PART_SIZE, S3Config};
use keylink_core::connector::{ConnectorConfig, Sink, Source, read_all};
use keylink_core::{Bytes, ErrorKind};

const MIB: usize = 1 << 20;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

async fn write_chunks(w: &mut Box<dyn keylink_core::ObjectWriter>, bytes: &[u8], chunk: usize) {
    for c in bytes.chunks(chunk) {
        w.write(Bytes::copy_from_slice(c)).await.expect("write");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_objects_upload_in_parts_visible_only_at_commit() {
    let store = fresh_store("multipart")
        .await
        .with_part_size(MIN_PART_SIZE)
        .with_concurrent_parts(2);
    let bytes = data(4 * MIN_PART_SIZE + 3 * MIB + 17, 7);
    let mut w = store.create("out/big.bin").await.unwrap();
    write_chunks(&mut w, &bytes, MIB + 3).await;
    // parts are on their way, the object does not exist
    assert_eq!(pending_uploads(&store).await.len(), 1);
    assert!(store.list("").await.unwrap().is_empty());
    w.finish().await.unwrap();
    assert_eq!(
        store.open("out/big.bin").await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );
    w.commit().await.unwrap();
    assert!(pending_uploads(&store).await.is_empty());

    let listed = store.list("out/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, Some(bytes.len() as u64));
    assert_eq!(read_all(&store, "out/big.bin").await.unwrap(), bytes);
    // five parts: a multipart ETag ends in -<parts>
    let head = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key("out/big.bin")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().ends_with("-5\""),
        "{:?}",
        head.e_tag()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn small_objects_are_one_put_at_commit() {
    let store = fresh_store("small").await;
    let mut w = store.create("k.csv").await.unwrap();
    w.write(Bytes::from_static(b"id,email\n")).await.unwrap();
    w.finish().await.unwrap();
    // buffered: no upload started, nothing visible
    assert!(pending_uploads(&store).await.is_empty());
    assert!(store.list("").await.unwrap().is_empty());
    w.commit().await.unwrap();
    assert_eq!(read_all(&store, "k.csv").await.unwrap(), b"id,email\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_and_drop_leave_no_object_and_no_upload() {
    let store = fresh_store("abort").await.with_part_size(MIN_PART_SIZE);
    let bytes = data(2 * MIN_PART_SIZE + 1, 1);

    let mut w = store.create("a.bin").await.unwrap();
    write_chunks(&mut w, &bytes, MIB).await;
    assert_eq!(pending_uploads(&store).await.len(), 1);
    w.abort().await.unwrap();
    assert!(pending_uploads(&store).await.is_empty());
    assert!(store.list("").await.unwrap().is_empty());

    let mut w = store.create("b.bin").await.unwrap();
    write_chunks(&mut w, &bytes, MIB).await;
    w.finish().await.unwrap();
    w.abort().await.unwrap();
    assert!(pending_uploads(&store).await.is_empty());

    // dropped: aborted in the background
    let mut w = store.create("c.bin").await.unwrap();
    write_chunks(&mut w, &bytes, MIB).await;
    drop(w);
    let started = Instant::now();
    loop {
        let left = pending_uploads(&store).await;
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a dropped writer's upload is still pending: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_upload_fails_clearly_and_leaves_nothing() {
    let store = fresh_store("failed").await.with_part_size(MIN_PART_SIZE);
    let mut w = store.create("dir/victim.bin").await.unwrap();
    write_chunks(&mut w, &data(MIN_PART_SIZE + 1, 2), MIB).await;
    // the upload disappears behind the writer's back (a lifecycle rule, an operator)
    let uploads = store
        .client()
        .list_multipart_uploads()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap();
    let upload = &uploads.uploads()[0];
    store
        .client()
        .abort_multipart_upload()
        .bucket(store.bucket())
        .key(upload.key().unwrap())
        .upload_id(upload.upload_id().unwrap())
        .send()
        .await
        .unwrap();
    let mut failed = None;
    for _ in 0..3 {
        if let Err(e) = w.write(Bytes::from(vec![0u8; MIN_PART_SIZE])).await {
            failed = Some(e);
            break;
        }
    }
    let e = match failed {
        Some(e) => e,
        None => w
            .finish()
            .await
            .expect_err("finish after the upload vanished"),
    };
    // S3 answers NoSuchUpload (404); moto 5.2.5 answers 500, retried, then given up on
    assert!(
        matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Transient),
        "{e}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with("s3 connector: cannot upload part ")
            && shown.contains(&format!(" of s3://{}/dir/victim.bin: ", store.bucket())),
        "{shown}"
    );
    // the message is one line of causes, without the raw response
    assert!(
        !shown.contains("Response {") && !shown.contains("<html"),
        "{shown}"
    );
    w.abort().await.unwrap();
    assert!(pending_uploads(&store).await.is_empty());
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_not_found_and_named() {
    let bucket = emulator::unique_bucket("missing");
    let store = emulator::config(&bucket).build_store().await.unwrap();
    let e = store.list("raw/").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains(&format!("s3://{bucket}/raw/")),
        "{e}"
    );
    let e = store.open("raw/a.csv").await.err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let mut w = store.create("x.csv").await.unwrap();
    w.write(Bytes::from_static(b"x")).await.unwrap();
    let e = w.commit().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains(&format!("s3://{bucket}/x.csv")),
        "{e}"
    );
}

/// The standard chain: only the bucket in the config; region, endpoint and credentials from
/// `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (which `cargo
/// xtask test` exports), path-style addressing because an endpoint is set.
#[tokio::test(flavor = "multi_thread")]
async fn region_endpoint_and_credentials_come_from_the_environment() {
    let store = fresh_store("env").await;
    for var in ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run the tests with `cargo xtask test`"
        );
    }
    let config: Box<dyn ConnectorConfig> =
        serde_json::from_str(&format!(r#"{{"type":"s3","bucket":"{}"}}"#, store.bucket())).unwrap();
    let ctx = Default::default();
    let sink = config.build_sink(&ctx).await.unwrap();
    keylink_core::connector::write_all(&*sink, "env.csv", Bytes::from_static(b"a\n"))
        .await
        .unwrap();
    let source = config.build_source(&ctx).await.unwrap();
    assert_eq!(read_all(&*source, "env.csv").await.unwrap(), b"a\n");
    assert_eq!(
        source.describe("env.csv"),
        format!("s3://{}/env.csv", store.bucket())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_debug_and_errors() {
    let secret = "wJalrXUtnFEMI-never-print-me";
    let bucket = emulator::unique_bucket("secret");
    let mut c: S3Config = emulator::config(&bucket);
    c.credentials.as_mut().unwrap().secret_access_key = secret.to_string().into();
    let store = c.build_store().await.unwrap();
    let e = store.open("a.csv").await.err().unwrap();
    let shown = format!("{c:?} {store:?} {e} {e:?}");
    assert!(!shown.contains(secret), "{shown}");
}
