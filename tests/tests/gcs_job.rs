//! End-to-end: the encryption job on Google Cloud Storage (issue #10), against fake-gcs-server
//! emulators. All data is synthetic.
//!
//! - a ≥ 50 MiB CSV read from the emulator `cargo xtask test` runs, encrypted, keys and derived
//!   outputs written back to it, checked with stock Tink and the derived-data oracle; then
//!   `keylink decrypt` with `gs://` locations;
//! - a job whose source is S3 and whose targets are GCS (two clouds in one job);
//! - the fault test starts emulators of its own and kills them mid-job: the job exits 2 naming the
//!   object, leaves no object behind (and cancels its upload sessions), and a rerun after a
//!   restart succeeds.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gcloud_storage::http::buckets::insert::{InsertBucketParam, InsertBucketRequest};
use keylink_connector_gcs::{GcsConfig, GcsCredentials, GcsStore};
use keylink_connector_s3::{S3Config, S3Credentials};
use keylink_core::connector::{Sink, Source};
use keylink_core::{Bytes, Sensitive};

const HEADER: &str = "SessionId,UserId,Email,UserName,Time,Consent,Page\n";

/// A marker in every PII value: it must never appear in outputs or messages.
const PII_MARKER: &str = "secretmail";

/// Writes `rows` rows (about 480 bytes each) to `path`.
fn write_csv(path: &Path, rows: usize) {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    w.write_all(HEADER.as_bytes()).unwrap();
    let filler = "x".repeat(380);
    for i in 0..rows {
        writeln!(
            w,
            "sess-{},cust-{},{PII_MARKER}{i}@example.com,\"Secret Name {i}, Jr.\",2024-03-{:02} {:02}:15:00,{},/page/{i}?pad={filler}",
            i / 8,
            i % 97,
            1 + (i % 3),
            i % 24,
            ["1", "\"[1,2]\"", "0"][i % 3],
        )
        .unwrap();
    }
    w.flush().unwrap();
}

/// A connector config for `bucket` on the emulator at `endpoint`.
fn gcs_config(bucket: &str, endpoint: &str) -> GcsConfig {
    let mut c = GcsConfig::new(bucket);
    c.endpoint = Some(endpoint.into());
    c.credentials = Some(GcsCredentials::Anonymous);
    c
}

/// The YAML entry of a GCS connector named `name` on `bucket` at `endpoint` (no credentials: a
/// custom endpoint gets none).
fn yaml_gcs(name: &str, bucket: &str, endpoint: &str) -> String {
    format!("  {name}: {{ type: gcs, bucket: {bucket}, endpoint: \"{endpoint}\" }}\n")
}

/// A job dir whose job reads `data/*.csv` from connector `input` and writes `out/` to
/// connector `output`, both defined in `connectors` (YAML lines).
fn job_dir(connectors: &str, input: &str, output: &str) -> JobDir {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    write_config(&d, connectors);
    let job = job("*.csv", "csv", "");
    // the source's connector ref comes first, then the two targets'
    let job = job.replacen(r#""name": "files""#, &format!(r#""name": "{input}""#), 1);
    let job = job.replace(r#""name": "files""#, &format!(r#""name": "{output}""#));
    d.write("job.json", job);
    d
}

fn write_config(d: &JobDir, connectors: &str) {
    d.write(
        "keylink.yaml",
        format!(
            "connectors:\n{connectors}contracts: ./contracts\n\
             key_store: {{ type: embedded, path: ./keys.db }}\n"
        ),
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates the bucket of `config` and returns a store on it.
async fn bucket(config: &GcsConfig) -> GcsStore {
    let store = config.build_store(&Default::default()).await.unwrap();
    store
        .client()
        .insert_bucket(&InsertBucketRequest {
            name: store.bucket().to_string(),
            param: InsertBucketParam {
                project: "keylink-test".into(),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create bucket {}: {e}", store.bucket()));
    store
}

/// Streams a local file into an object.
async fn upload(sink: &dyn Sink, file: &Path, key: &str) {
    let mut f = std::fs::File::open(file).unwrap();
    let mut w = sink.create(key).await.unwrap();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        w.write(Bytes::copy_from_slice(&buf[..n])).await.unwrap();
    }
    w.finish().await.unwrap();
    w.commit().await.unwrap();
}

/// Streams an object into a local file.
async fn download(store: &GcsStore, key: &str, file: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(file).unwrap();
    let mut r = store.open(key).await.unwrap();
    while let Some(chunk) = r.read_chunk().await.unwrap() {
        f.write_all(&chunk).unwrap();
    }
}

async fn object_paths(store: &GcsStore) -> Vec<String> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .collect()
}

/// A bucket name no other test or run uses.
fn unique(purpose: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("kl-e2e-{purpose}-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// An emulator `cargo xtask test` runs, named by `var`. Fails loudly when it is not there.
fn shared_endpoint(var: &str) -> String {
    let ep = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the GCS end-to-end tests need the emulators. Run `cargo xtask \
             test` (or `cargo xtask emulators start` and export what it prints)."
        )
    });
    let port = ep.rsplit(':').next().unwrap().trim_end_matches('/');
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok(),
        "the emulator at {ep} ({var}) does not answer: run `cargo xtask test`"
    );
    ep
}

fn download_all(rt: &tokio::runtime::Runtime, store: &GcsStore, d: &JobDir, keys: &[&str]) {
    rt.block_on(async {
        for k in keys {
            download(store, k, &d.path().join(k)).await;
        }
    });
}

/// Checks the encrypted output against the input with stock Tink and the keys export.
fn check_encrypted(d: &JobDir, input: &Path, rows: usize) {
    let encrypted = std::fs::read(d.path().join("out/encrypted.csv")).unwrap();
    assert!(
        encrypted.len() as u64 > std::fs::metadata(input).unwrap().len(),
        "the encrypted output is too small"
    );
    assert!(
        !encrypted
            .windows(PII_MARKER.len())
            .any(|w| w == PII_MARKER.as_bytes()),
        "plaintext PII in the encrypted output"
    );
    let out = tink_check(
        &d.path().join("out/keys.csv"),
        &d.path().join("out/encrypted.csv"),
        input,
        "Email,UserName",
        "csv",
    );
    assert!(out.contains(&format!("{rows} rows")), "{out}");
}

#[test]
fn a_50_mib_csv_on_gcs_encrypts_and_decrypts_with_stock_tink() {
    let endpoint = shared_endpoint("KEYLINK_TEST_GCS_ENDPOINT");
    let name = unique("job");
    let d = job_dir(&yaml_gcs("lake", &name, &endpoint), "lake", "lake");
    // and a derived dataset, written back to the bucket too
    let job = d.read("job.json").replacen(
        "\"encryption_keys_data\"",
        r#""derived_data": [ { "target": { "data_connector_ref": { "name": "lake" },
             "path_prefix": "out", "file_name": "derived.csv" },
           "consent_levels": [1],
           "masked_fields": { "seed": "gcs-seed", "field_patterns":
             { "test/clicks/1.0.0": { "field_patterns": ["Email"] } } } } ],
           "encryption_keys_data""#,
        1,
    );
    d.write("job.json", job);
    let rows = 120_000;
    let input = d.path().join("input.csv");
    write_csv(&input, rows);
    let size = std::fs::metadata(&input).unwrap().len();
    assert!(size >= 50 << 20, "the input has only {size} bytes");

    let rt = runtime();
    let store = rt.block_on(async {
        let store = bucket(&gcs_config(&name, &endpoint)).await;
        upload(&store, &input, "data/clicks.csv").await;
        store
    });

    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(!r.all_output().contains(PII_MARKER), "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], rows);
    assert_eq!(s["rows_accepted"], rows);
    assert_eq!(
        s["inputs"][0]["object"],
        format!("gs://{name}/data/clicks.csv"),
        "{}",
        r.stdout
    );

    assert_eq!(
        rt.block_on(object_paths(&store)),
        [
            "data/clicks.csv",
            "out/derived.csv",
            "out/encrypted.csv",
            "out/keys.csv"
        ]
    );
    download_all(
        &rt,
        &store,
        &d,
        &["out/encrypted.csv", "out/keys.csv", "out/derived.csv"],
    );
    // the derived dataset, row for row against the independent oracle of SPEC §3
    let out = oracle_check(
        &d,
        "job.json",
        "contracts/c.json",
        "input.csv",
        "out/derived.csv",
        0,
    );
    assert!(out.contains("0 mismatches"), "{out}");
    check_encrypted(&d, &input, rows);

    // later derivation straight from and to the bucket, with gs:// locations (the endpoint from
    // STORAGE_EMULATOR_HOST, which `cargo xtask test` exports): the same rows as the job's
    d.write("seed.txt", "gcs-seed\n");
    let later = d.run(&[
        "decrypt",
        "--input",
        &format!("gs://{name}/out/encrypted.csv"),
        "--keys",
        &format!("gs://{name}/out/keys.csv"),
        "--contract",
        "contracts/c.json",
        "--purposes",
        "1",
        "--mask",
        "Email",
        "--seed-file",
        "seed.txt",
        "--output",
        &format!("gs://{name}/later/derived.csv"),
    ]);
    assert_eq!(later.code, 0, "{}", later.all_output());
    assert!(
        !later.all_output().contains(PII_MARKER),
        "{}",
        later.all_output()
    );
    download_all(&rt, &store, &d, &["later/derived.csv"]);
    assert!(
        d.read("later/derived.csv") == d.read("out/derived.csv"),
        "keylink decrypt from gs:// differs from the job's derived output"
    );
}

// ------------------------------------------------------------------------------ cross-cloud

/// Creates an S3 bucket on the moto emulator at `endpoint`.
fn s3_config(bucket: &str, endpoint: &str) -> S3Config {
    let mut c = S3Config::new(bucket);
    c.region = Some("us-east-1".into());
    c.endpoint = Some(endpoint.into());
    c.force_path_style = Some(true);
    c.credentials = Some(S3Credentials {
        access_key_id: Sensitive::new("test".into()),
        secret_access_key: Sensitive::new("test".into()),
        session_token: None,
    });
    c
}

#[test]
fn a_job_reads_from_s3_and_writes_to_gcs() {
    let gcs = shared_endpoint("KEYLINK_TEST_GCS_ENDPOINT");
    let s3 = shared_endpoint("KEYLINK_TEST_S3_ENDPOINT");
    let (in_bucket, out_bucket) = (unique("cross-in"), unique("cross-out"));
    let d = job_dir(
        &(format!(
            "  raw: {{ type: s3, bucket: {in_bucket}, region: us-east-1, endpoint: \"{s3}\", \
             credentials: {{ access_key_id: test, secret_access_key: test }} }}\n"
        ) + &yaml_gcs("safe", &out_bucket, &gcs)),
        "raw",
        "safe",
    );
    let rows = 20_000;
    let input = d.path().join("input.csv");
    write_csv(&input, rows);
    let rt = runtime();
    let out_store = rt.block_on(async {
        let in_store = s3_config(&in_bucket, &s3).build_store().await.unwrap();
        in_store
            .client()
            .create_bucket()
            .bucket(&in_bucket)
            .send()
            .await
            .unwrap();
        upload(&in_store, &input, "data/clicks.csv").await;
        bucket(&gcs_config(&out_bucket, &gcs)).await
    });
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_accepted"], rows);
    assert_eq!(
        s["inputs"][0]["object"],
        format!("s3://{in_bucket}/data/clicks.csv")
    );
    assert_eq!(
        rt.block_on(object_paths(&out_store)),
        ["out/encrypted.csv", "out/keys.csv"]
    );
    download_all(&rt, &out_store, &d, &["out/encrypted.csv", "out/keys.csv"]);
    check_encrypted(&d, &input, rows);
}

// ------------------------------------------------------------------------------ fault test

/// A fake-gcs-server of the test's own, logging every request to a file (the test watches for
/// the job's first output chunk), killed (by its PID) when dropped.
struct FakeGcs {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl FakeGcs {
    fn start(dir: &Path) -> FakeGcs {
        let server = std::env::var_os("KEYLINK_TEST_FAKE_GCS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!(
                    "KEYLINK_TEST_FAKE_GCS_SERVER is not set: run `cargo xtask test` (it installs \
                     and names the GCS emulator)"
                )
            });
        assert!(
            server.exists(),
            "{} is missing: run `cargo xtask test`",
            server.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("fake-gcs-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&server)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .args(["-backend", "memory", "-log-level", "info"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", server.display()));
        let fake = FakeGcs { child, port, log };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "fake-gcs-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fake
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests it logged (its access log), as text.
    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the emulator (all it holds is gone: it keeps everything in memory).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether an output chunk of `bucket` has been sent (a PUT to an upload session) according to
/// the emulator log `log`, since it had `since` bytes.
fn chunk_sent(log: &Path, bucket: &str, since: usize) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .get(since..)
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.contains(&format!("\\\"PUT /upload/storage/v1/b/{bucket}/o?"))
                && l.contains("upload_id=")
        })
}

/// Starts the job, waits until an output chunk was sent to the emulator whose log is `log`, then
/// calls `kill`; returns the job's exit code and stderr.
fn run_and_kill_mid_job(
    d: &JobDir,
    log: PathBuf,
    bucket: &str,
    kill: impl FnOnce(),
) -> (i32, String) {
    let since = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
    let mut job = Command::new(bin())
        .args(["run", "job.json", "--no-progress"])
        .current_dir(d.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = job.try_wait().unwrap() {
            let mut err = String::new();
            job.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the job ended ({status}) before any output chunk was uploaded: {err}");
        }
        if chunk_sent(&log, bucket, since) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no output chunk was sent in 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill();
    // bounded retries: the job gives up on its own (this limit only keeps a bug from hanging CI)
    let started = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(600) {
            let _ = job.kill();
            panic!("the job did not give up within 600 s after the emulator was stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    job.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn stopping_the_emulator_mid_job_fails_clearly_and_leaves_nothing() {
    let rt = runtime();
    let logs = tempfile::tempdir().unwrap();
    let input_file = tempfile::NamedTempFile::new().unwrap();
    write_csv(input_file.path(), 150_000); // ~70 MB: the job runs for a while

    // 1. The input store dies mid-job; the output store stays up: exit 2, the message names the
    //    input object, the outputs' upload sessions were cancelled — nothing remains.
    let (ins, outs) = (FakeGcs::start(logs.path()), FakeGcs::start(logs.path()));
    let (in_bucket, out_bucket) = (unique("fault-in"), unique("fault-out"));
    let connectors = |ins: &FakeGcs, outs: &FakeGcs| {
        yaml_gcs("raw", &in_bucket, &ins.endpoint())
            + &yaml_gcs("safe", &out_bucket, &outs.endpoint())
    };
    let d = job_dir(&connectors(&ins, &outs), "raw", "safe");
    let out_store = rt.block_on(async {
        let in_store = bucket(&gcs_config(&in_bucket, &ins.endpoint())).await;
        upload(&in_store, input_file.path(), "data/clicks.csv").await;
        bucket(&gcs_config(&out_bucket, &outs.endpoint())).await
    });
    let (code, err) = run_and_kill_mid_job(&d, outs.log.clone(), &out_bucket, || ins.kill());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("gs://{in_bucket}/data/clicks.csv")),
        "the message does not name the input object: {err}"
    );
    assert!(err.contains("gcs connector: cannot read"), "{err}");
    assert!(!err.contains(PII_MARKER), "{err}");
    assert!(!err.contains("upload_id"), "{err}");
    assert!(
        rt.block_on(object_paths(&out_store)).is_empty(),
        "an output object remains"
    );
    let cancelled = outs
        .requests()
        .lines()
        .filter(|l| l.contains(&format!("\\\"DELETE /upload/storage/v1/b/{out_bucket}/o?")))
        .count();
    assert!(
        cancelled >= 1,
        "no upload session was cancelled:\n{}",
        outs.requests()
    );

    // 2. The output store dies mid-job: exit 2, the message names an output object.
    let ins = FakeGcs::start(logs.path());
    write_config(&d, &connectors(&ins, &outs));
    rt.block_on(async {
        let in_store = bucket(&gcs_config(&in_bucket, &ins.endpoint())).await;
        upload(&in_store, input_file.path(), "data/clicks.csv").await;
    });
    let (code, err) = run_and_kill_mid_job(&d, outs.log.clone(), &out_bucket, || outs.kill());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("gs://{out_bucket}/out/")),
        "the message does not name the output object: {err}"
    );
    assert!(err.contains("gcs connector: cannot"), "{err}");
    assert!(!err.contains(PII_MARKER), "{err}");
    assert!(!err.contains("upload_id"), "{err}");

    // 3. After a restart (a fresh, empty emulator) the same job succeeds.
    let outs = FakeGcs::start(logs.path());
    write_config(&d, &connectors(&ins, &outs));
    let out_store = rt.block_on(bucket(&gcs_config(&out_bucket, &outs.endpoint())));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert_eq!(
        rt.block_on(object_paths(&out_store)),
        ["out/encrypted.csv", "out/keys.csv"]
    );
}
