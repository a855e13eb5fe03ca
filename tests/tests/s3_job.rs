//! End-to-end: the encryption job on S3 (issue #4), against moto S3 emulators. All data is
//! synthetic.
//!
//! - a ≥ 50 MiB CSV read from the emulator `cargo xtask test` runs, encrypted and keys outputs
//!   written back to it, checked with stock Tink;
//! - the fault test starts emulators of its own and kills them mid-job: the job exits 2 naming the
//!   object, leaves neither an object nor a pending multipart upload behind, and a rerun after a
//!   restart succeeds.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use keylink_connector_s3::{S3Config, S3Credentials, S3Store};
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

/// A connector config for `bucket` on the emulator at `endpoint` (everything explicit).
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

/// The YAML entry of a connector named `name` on `bucket` at `endpoint`.
fn yaml_connector(name: &str, bucket: &str, endpoint: &str) -> String {
    format!(
        "  {name}: {{ type: s3, bucket: {bucket}, region: us-east-1, endpoint: \"{endpoint}\", \
         credentials: {{ access_key_id: test, secret_access_key: test }} }}\n"
    )
}

/// A job dir whose job reads `data/*.csv` from connector `input` and writes `out/` to
/// connector `output`, both defined in `connectors` (YAML lines).
fn s3_job_dir(connectors: &str, input: &str, output: &str) -> JobDir {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write(
        "keylink.yaml",
        format!(
            "connectors:\n{connectors}contracts: ./contracts\n\
             key_store: {{ type: embedded, path: ./keys.db }}\n"
        ),
    );
    let job = job("*.csv", "csv", "");
    // the source's connector ref comes first, then the two targets'
    let job = job.replacen(r#""name": "files""#, &format!(r#""name": "{input}""#), 1);
    let job = job.replace(r#""name": "files""#, &format!(r#""name": "{output}""#));
    d.write("job.json", job);
    d
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates `bucket` and returns a store on it.
async fn bucket(config: &S3Config) -> S3Store {
    let store = config.build_store().await.unwrap();
    store
        .client()
        .create_bucket()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {}: {e}", store.bucket()));
    store
}

/// Streams a local file into an object.
async fn upload(store: &S3Store, file: &Path, key: &str) {
    let mut f = std::fs::File::open(file).unwrap();
    let mut w = store.create(key).await.unwrap();
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
async fn download(store: &S3Store, key: &str, file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let mut r = store.open(key).await.unwrap();
    while let Some(chunk) = r.read_chunk().await.unwrap() {
        f.write_all(&chunk).unwrap();
    }
}

async fn object_paths(store: &S3Store) -> Vec<String> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .collect()
}

async fn pending_uploads(store: &S3Store) -> usize {
    store
        .client()
        .list_multipart_uploads()
        .bucket(store.bucket())
        .send()
        .await
        .map(|o| o.uploads().len())
        .unwrap_or(0)
}

/// A bucket name no other test or run uses.
fn unique(purpose: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("kl-e2e-{purpose}-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// The emulator `cargo xtask test` runs. Fails loudly when it is not there.
fn shared_endpoint() -> String {
    let ep = std::env::var("KEYLINK_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "KEYLINK_TEST_S3_ENDPOINT is not set: the S3 end-to-end tests need the S3 emulator. \
             Run `cargo xtask test` (or `cargo xtask emulators start` and export what it prints)."
        )
    });
    let port = ep.rsplit(':').next().unwrap().trim_end_matches('/');
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok(),
        "the S3 emulator at {ep} does not answer: run `cargo xtask test`"
    );
    ep
}

#[test]
fn a_50_mib_csv_on_s3_encrypts_and_decrypts_with_stock_tink() {
    let endpoint = shared_endpoint();
    let name = unique("job");
    let d = s3_job_dir(&yaml_connector("lake", &name, &endpoint), "lake", "lake");
    // and a derived dataset, written back to the bucket too
    let job = d.read("job.json").replacen(
        "\"encryption_keys_data\"",
        r#""derived_data": [ { "target": { "data_connector_ref": { "name": "lake" },
             "path_prefix": "out", "file_name": "derived.csv" },
           "consent_levels": [1],
           "masked_fields": { "seed": "s3-seed", "field_patterns":
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
        let store = bucket(&s3_config(&name, &endpoint)).await;
        upload(&store, &input, "data/clicks.csv").await;
        store
    });

    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(!r.all_output().contains(PII_MARKER), "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], rows);
    assert_eq!(s["rows_accepted"], rows);

    rt.block_on(async {
        assert_eq!(
            object_paths(&store).await,
            [
                "data/clicks.csv",
                "out/derived.csv",
                "out/encrypted.csv",
                "out/keys.csv"
            ]
        );
        assert_eq!(pending_uploads(&store).await, 0);
        download(&store, "out/encrypted.csv", &d.path().join("encrypted.csv")).await;
        download(&store, "out/keys.csv", &d.path().join("keys.csv")).await;
        std::fs::create_dir_all(d.path().join("out")).unwrap();
        download(&store, "out/keys.csv", &d.path().join("out/keys.csv")).await;
        download(&store, "out/derived.csv", &d.path().join("out/derived.csv")).await;
    });
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
    let encrypted = std::fs::read(d.path().join("encrypted.csv")).unwrap();
    assert!(
        encrypted.len() as u64 > size,
        "the encrypted output is too small"
    );
    assert!(
        !encrypted
            .windows(PII_MARKER.len())
            .any(|w| w == PII_MARKER.as_bytes()),
        "plaintext PII in the encrypted output"
    );
    let out = tink_check(
        &d.path().join("keys.csv"),
        &d.path().join("encrypted.csv"),
        &input,
        "Email,UserName",
        "csv",
    );
    assert!(out.contains(&format!("{rows} rows")), "{out}");
}

// ------------------------------------------------------------------------------ fault test

/// A moto server of the test's own, killed (by its PID) when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let server = std::env::var_os("KEYLINK_TEST_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/emulators/venv/bin/moto_server"));
        assert!(
            server.exists(),
            "moto_server not found at {}: run `cargo xtask test` (it installs the S3 emulator)",
            server.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", server.display()));
        let moto = Moto { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the emulator (all it holds is gone: moto keeps everything in memory).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the job, waits until an output multipart upload is pending on `watch`, then calls
/// `kill`; returns the job's exit code and stderr.
fn run_and_kill_mid_job(
    d: &JobDir,
    rt: &tokio::runtime::Runtime,
    watch: &S3Store,
    kill: impl FnOnce(),
) -> (i32, String) {
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
            panic!("the job ended ({status}) before any output part was uploaded: {err}");
        }
        if rt.block_on(pending_uploads(watch)) > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no output upload started in 300 s"
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
    let input_file = tempfile::NamedTempFile::new().unwrap();
    write_csv(input_file.path(), 150_000); // ~70 MB: the job runs for a while

    // 1. The input store dies mid-job; the output store stays up: exit 2, the message names the
    //    input object, and the outputs' multipart uploads were aborted — nothing remains.
    let (ins, outs) = (Moto::start(), Moto::start());
    let (in_bucket, out_bucket) = (unique("fault-in"), unique("fault-out"));
    let connectors = |ins: &Moto, outs: &Moto| {
        yaml_connector("raw", &in_bucket, &ins.endpoint())
            + &yaml_connector("safe", &out_bucket, &outs.endpoint())
    };
    let d = s3_job_dir(&connectors(&ins, &outs), "raw", "safe");
    let (in_store, out_store) = rt.block_on(async {
        let in_store = bucket(&s3_config(&in_bucket, &ins.endpoint())).await;
        upload(&in_store, input_file.path(), "data/clicks.csv").await;
        (
            in_store,
            bucket(&s3_config(&out_bucket, &outs.endpoint())).await,
        )
    });
    drop(in_store);
    let (code, err) = run_and_kill_mid_job(&d, &rt, &out_store, || ins.kill());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("s3://{in_bucket}/data/clicks.csv")),
        "the message does not name the input object: {err}"
    );
    assert!(err.contains("s3 connector: cannot read"), "{err}");
    assert!(!err.contains(PII_MARKER), "{err}");
    rt.block_on(async {
        assert!(
            object_paths(&out_store).await.is_empty(),
            "an output object remains"
        );
        assert_eq!(
            pending_uploads(&out_store).await,
            0,
            "an output multipart upload remains"
        );
    });

    // 2. The output store dies mid-job: exit 2, the message names an output object.
    let ins = Moto::start();
    d.write("keylink.yaml", format!(
        "connectors:\n{}contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
        connectors(&ins, &outs)
    ));
    rt.block_on(async {
        let in_store = bucket(&s3_config(&in_bucket, &ins.endpoint())).await;
        upload(&in_store, input_file.path(), "data/clicks.csv").await;
    });
    let (code, err) = run_and_kill_mid_job(&d, &rt, &out_store, || outs.kill());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("s3://{out_bucket}/out/")),
        "the message does not name the output object: {err}"
    );
    assert!(!err.contains(PII_MARKER), "{err}");

    // 3. After a restart (a fresh, empty emulator) the same job succeeds.
    let outs = Moto::start();
    d.write("keylink.yaml", format!(
        "connectors:\n{}contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
        connectors(&ins, &outs)
    ));
    let out_store = rt.block_on(bucket(&s3_config(&out_bucket, &outs.endpoint())));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    rt.block_on(async {
        assert_eq!(
            object_paths(&out_store).await,
            ["out/encrypted.csv", "out/keys.csv"]
        );
        assert_eq!(pending_uploads(&out_store).await, 0);
    });
}

/// Issue #16: a watcher on an S3 prefix processes objects uploaded while it runs, each exactly
/// once, and its outputs (back on S3) decrypt with stock Tink.
#[test]
fn watch_processes_s3_objects_as_they_land() {
    let endpoint = shared_endpoint();
    let name = unique("watch");
    let d = s3_job_dir(&yaml_connector("lake", &name, &endpoint), "lake", "lake");
    let job = d
        .read("job.json")
        .replace("\"encrypted.csv\"", "\"{input}-encrypted.csv\"")
        .replace("\"keys.csv\"", "\"{input}-keys.csv\"")
        .replace(
            "\"timestamp_config\"",
            "\"batch_job_group_id\": \"s3-watch\", \"timestamp_config\"",
        );
    d.write("job.json", job);
    let rt = runtime();
    let store = rt.block_on(bucket(&s3_config(&name, &endpoint)));
    for i in 0..3 {
        write_csv(&d.path().join(format!("in{i}.csv")), 2000 + i * 100);
    }
    rt.block_on(upload(&store, &d.path().join("in0.csv"), "data/in0.csv"));
    let w = Watcher::start(d.path(), "job.json", &[]);
    wait_for(&w, "job.json", "in0", |s| {
        s.get("data/in0.csv").is_some_and(|e| e["status"] == "done")
    });
    for i in 1..3 {
        rt.block_on(upload(
            &store,
            &d.path().join(format!("in{i}.csv")),
            &format!("data/in{i}.csv"),
        ));
    }
    wait_for(&w, "job.json", "in1 and in2", |s| {
        (1..3).all(|i| {
            s.get(&format!("data/in{i}.csv"))
                .is_some_and(|e| e["status"] == "done")
        })
    });
    let log = w.log();
    assert_eq!(w.terminate(), 0, "{log}");
    assert!(!log.contains(PII_MARKER));
    let mut outs: Vec<String> = rt
        .block_on(object_paths(&store))
        .into_iter()
        .filter(|p| p.starts_with("out/"))
        .collect();
    outs.sort();
    let expected: Vec<String> = (0..3)
        .flat_map(|i| {
            [
                format!("out/in{i}-encrypted.csv"),
                format!("out/in{i}-keys.csv"),
            ]
        })
        .collect();
    assert_eq!(outs, expected);
    rt.block_on(download(
        &store,
        "out/in2-encrypted.csv",
        &d.path().join("enc.csv"),
    ));
    rt.block_on(download(
        &store,
        "out/in2-keys.csv",
        &d.path().join("keys.csv"),
    ));
    let out = tink_check(
        &d.path().join("keys.csv"),
        &d.path().join("enc.csv"),
        &d.path().join("in2.csv"),
        "Email,UserName",
        "csv",
    );
    assert!(out.contains("0 mismatches"), "{out}");
    assert_eq!(rt.block_on(pending_uploads(&store)), 0);
}
