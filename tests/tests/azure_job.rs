//! End-to-end: the encryption job on Azure Blob Storage (issue #11), against Azurite. All data
//! is synthetic.
//!
//! - a ≥ 50 MiB CSV read from the Azurite `cargo xtask test` runs, encrypted, keys and derived
//!   outputs written back to it, checked with stock Tink and the derived-data oracle; then
//!   `keylink decrypt` with `az://container/path` locations (account and key from
//!   `AZURE_STORAGE_CONNECTION_STRING` alone) reproduces the derived output;
//! - the fault test starts Azurites of its own and kills them mid-job: the job exits 2 naming
//!   the object, leaves no committed output blob behind, and a rerun after a restart succeeds.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_storage_blob::models::BlockListType;
use common::*;
use keylink_connector_azure::{AzureConfig, AzureCredentials, AzureStore};
use keylink_core::connector::{Sink, Source};
use keylink_core::{Bytes, Sensitive};

const HEADER: &str = "SessionId,UserId,Email,UserName,Time,Consent,Page\n";

/// A marker in every PII value: it must never appear in outputs or messages.
const PII_MARKER: &str = "secretmail";

/// Azurite's public development account and key (documented by Microsoft).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

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

/// A connector config for `container` on the Azurite at `endpoint` (everything explicit).
fn azure_config(container: &str, endpoint: &str) -> AzureConfig {
    let mut c = AzureConfig::new(container);
    c.account = Some(ACCOUNT.into());
    c.endpoint = Some(endpoint.into());
    c.credentials = Some(AzureCredentials::AccountKey(Sensitive::new(KEY.into())));
    c
}

/// The YAML entry of a connector named `name` on `container` at `endpoint`.
fn yaml_connector(name: &str, container: &str, endpoint: &str) -> String {
    format!(
        "  {name}: {{ type: azure, account: {ACCOUNT}, container: {container}, \
         endpoint: \"{endpoint}\", credentials: {{ account_key: \"{KEY}\" }} }}\n"
    )
}

/// A job dir whose job reads `data/*.csv` from connector `input` and writes `out/` to
/// connector `output`, both defined in `connectors` (YAML lines).
fn azure_job_dir(connectors: &str, input: &str, output: &str) -> JobDir {
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

/// Creates `container` and returns a store on it.
async fn container(config: &AzureConfig) -> AzureStore {
    let store = config.build_store().await.unwrap();
    store
        .create_container()
        .await
        .unwrap_or_else(|e| panic!("create container {}: {e}", store.container()));
    store
}

/// Streams a local file into a blob.
async fn upload(store: &AzureStore, file: &Path, name: &str) {
    let mut f = std::fs::File::open(file).unwrap();
    let mut w = store.create(name).await.unwrap();
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

/// Streams a blob into a local file.
async fn download(store: &AzureStore, name: &str, file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let mut r = store.open(name).await.unwrap();
    while let Some(chunk) = r.read_chunk().await.unwrap() {
        f.write_all(&chunk).unwrap();
    }
}

async fn blob_names(store: &AzureStore) -> Vec<String> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .collect()
}

/// How many blocks of `name` are staged but not committed (0 when the emulator is gone).
async fn uncommitted_blocks(store: &AzureStore, name: &str) -> usize {
    let Ok(list) = store
        .client()
        .blob_client(name)
        .block_blob_client()
        .get_block_list(BlockListType::Uncommitted, None)
        .await
    else {
        return 0;
    };
    list.into_model()
        .ok()
        .and_then(|l| l.uncommitted_blocks)
        .map_or(0, |b| b.len())
}

/// A container name no other test or run uses.
fn unique(purpose: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("kl-e2e-{purpose}-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// The Azurite `cargo xtask test` runs. Fails loudly when it is not there.
fn shared_endpoint() -> String {
    let ep = std::env::var("KEYLINK_TEST_AZURE_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "KEYLINK_TEST_AZURE_ENDPOINT is not set: the Azure end-to-end tests need Azurite. \
             Run `cargo xtask test` (or `cargo xtask azurite start` and export what it prints)."
        )
    });
    let host = ep.trim_start_matches("http://").split('/').next().unwrap();
    assert!(
        std::net::TcpStream::connect(host).is_ok(),
        "Azurite at {ep} does not answer: run `cargo xtask test`"
    );
    ep
}

#[test]
fn a_50_mib_csv_on_azure_encrypts_and_decrypts_with_stock_tink() {
    let endpoint = shared_endpoint();
    let cs = std::env::var("AZURE_STORAGE_CONNECTION_STRING").unwrap_or_default();
    assert!(
        cs.contains(&endpoint),
        "AZURE_STORAGE_CONNECTION_STRING does not name the test Azurite: run `cargo xtask test`"
    );
    let name = unique("job");
    let d = azure_job_dir(&yaml_connector("lake", &name, &endpoint), "lake", "lake");
    // and a derived dataset, written back to the container too
    let job = d.read("job.json").replacen(
        "\"encryption_keys_data\"",
        r#""derived_data": [ { "target": { "data_connector_ref": { "name": "lake" },
             "path_prefix": "out", "file_name": "derived.csv" },
           "consent_levels": [1],
           "masked_fields": { "seed": "az-seed", "field_patterns":
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
        let store = container(&azure_config(&name, &endpoint)).await;
        upload(&store, &input, "data/clicks.csv").await;
        store
    });

    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(!r.all_output().contains(PII_MARKER), "{}", r.all_output());
    assert!(!r.all_output().contains(KEY), "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], rows);
    assert_eq!(s["rows_accepted"], rows);

    // `keylink decrypt` on az:// locations: the account, endpoint and key come from
    // AZURE_STORAGE_CONNECTION_STRING alone (no config file)
    d.write("seed.txt", "az-seed\n");
    let later = d.run(&[
        "decrypt",
        "--input",
        &format!("az://{name}/out/encrypted.csv"),
        "--keys",
        &format!("az://{name}/out/keys.csv"),
        "--contract",
        "contracts/c.json",
        "--purposes",
        "1",
        "--mask",
        "Email",
        "--seed-file",
        "seed.txt",
        "--output",
        &format!("az://{name}/later/derived.csv"),
    ]);
    assert_eq!(later.code, 0, "{}", later.all_output());

    rt.block_on(async {
        assert_eq!(
            blob_names(&store).await,
            [
                "data/clicks.csv",
                "later/derived.csv",
                "out/derived.csv",
                "out/encrypted.csv",
                "out/keys.csv"
            ]
        );
        download(&store, "out/encrypted.csv", &d.path().join("encrypted.csv")).await;
        download(&store, "out/keys.csv", &d.path().join("keys.csv")).await;
        std::fs::create_dir_all(d.path().join("out")).unwrap();
        std::fs::create_dir_all(d.path().join("later")).unwrap();
        download(&store, "out/keys.csv", &d.path().join("out/keys.csv")).await;
        download(&store, "out/derived.csv", &d.path().join("out/derived.csv")).await;
        download(
            &store,
            "later/derived.csv",
            &d.path().join("later/derived.csv"),
        )
        .await;
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
    assert!(
        d.read("later/derived.csv") == d.read("out/derived.csv"),
        "decrypt on az:// differs from the job's derived output"
    );
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

/// An Azurite of the test's own, killed (by its PID) when dropped.
struct Azurite {
    child: Child,
    port: u16,
}

impl Azurite {
    fn start() -> Azurite {
        let server = std::env::var_os("KEYLINK_TEST_AZURITE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                root().join("target/emulators/azurite/node_modules/.bin/azurite-blob")
            });
        assert!(
            server.exists(),
            "azurite-blob not found at {}: run `cargo xtask test` (it installs Azurite)",
            server.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args([
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--inMemoryPersistence",
                "--silent",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", server.display()));
        let azurite = Azurite { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Azurite did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        azurite
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Kills the emulator (all it holds is gone: it keeps everything in memory).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the job, waits until blocks of the encrypted output are staged on `watch`, then calls
/// `kill`; returns the job's exit code and stderr.
fn run_and_kill_mid_job(
    d: &JobDir,
    rt: &tokio::runtime::Runtime,
    watch: &AzureStore,
    kill: impl FnOnce(),
) -> (i32, String) {
    let mut job = Command::new(bin())
        .args(["run", "job.json", "--no-progress"])
        .current_dir(d.path())
        .env_remove("RUST_LOG")
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = job.try_wait().unwrap() {
            let mut err = String::new();
            job.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the job ended ({status}) before any output block was staged: {err}");
        }
        if rt.block_on(uncommitted_blocks(watch, "out/encrypted.csv")) > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no output block was staged in 300 s"
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
fn stopping_azurite_mid_job_fails_clearly_and_commits_nothing() {
    let rt = runtime();
    let input_file = tempfile::NamedTempFile::new().unwrap();
    // ~140 MB: the input must still be being read when the first output block is staged. A job
    // holds up to ~50 MB of input ahead of its writer (16 MiB of parallel range downloads, the
    // chunk channel, the batches waiting for keys); with 70 MB, a quiet machine read it all
    // before the kill, and the job succeeded.
    write_csv(input_file.path(), 300_000);

    // 1. The input store dies mid-job; the output store stays up: exit 2, the message names the
    //    input blob, and no output blob was committed.
    let (ins, outs) = (Azurite::start(), Azurite::start());
    let (in_container, out_container) = (unique("fault-in"), unique("fault-out"));
    let connectors = |ins: &Azurite, outs: &Azurite| {
        yaml_connector("raw", &in_container, &ins.endpoint())
            + &yaml_connector("safe", &out_container, &outs.endpoint())
    };
    let d = azure_job_dir(&connectors(&ins, &outs), "raw", "safe");
    let (in_store, out_store) = rt.block_on(async {
        let in_store = container(&azure_config(&in_container, &ins.endpoint())).await;
        upload(&in_store, input_file.path(), "data/clicks.csv").await;
        (
            in_store,
            container(&azure_config(&out_container, &outs.endpoint())).await,
        )
    });
    drop(in_store);
    let (code, err) = run_and_kill_mid_job(&d, &rt, &out_store, || ins.kill());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("az://{ACCOUNT}/{in_container}/data/clicks.csv")),
        "the message does not name the input blob: {err}"
    );
    assert!(err.contains("azure connector: cannot read"), "{err}");
    assert!(!err.contains(PII_MARKER) && !err.contains(KEY), "{err}");
    // a SAS signature in a transport error is blanked out
    assert_eq!(
        err.matches("sig=").count(),
        err.matches("sig=REDACTED").count(),
        "{err}"
    );
    rt.block_on(async {
        assert!(
            blob_names(&out_store).await.is_empty(),
            "an output blob was committed"
        );
    });

    // 2. The output store dies mid-job: exit 2, the message names an output blob.
    let ins = Azurite::start();
    d.write("keylink.yaml", format!(
        "connectors:\n{}contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
        connectors(&ins, &outs)
    ));
    rt.block_on(async {
        let in_store = container(&azure_config(&in_container, &ins.endpoint())).await;
        upload(&in_store, input_file.path(), "data/clicks.csv").await;
    });
    let (code, err) = run_and_kill_mid_job(&d, &rt, &out_store, || outs.kill());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("az://{ACCOUNT}/{out_container}/out/")),
        "the message does not name the output blob: {err}"
    );
    assert!(!err.contains(PII_MARKER) && !err.contains(KEY), "{err}");

    // 3. After a restart (a fresh, empty emulator) the same job succeeds.
    let outs = Azurite::start();
    d.write("keylink.yaml", format!(
        "connectors:\n{}contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
        connectors(&ins, &outs)
    ));
    let out_store = rt.block_on(container(&azure_config(&out_container, &outs.endpoint())));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    rt.block_on(async {
        assert_eq!(
            blob_names(&out_store).await,
            ["out/encrypted.csv", "out/keys.csv"]
        );
        assert_eq!(uncommitted_blocks(&out_store, "out/encrypted.csv").await, 0);
    });
}
