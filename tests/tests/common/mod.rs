//! Helpers shared by the end-to-end tests. All data here is synthetic.
#![allow(dead_code)]

pub mod kafka;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CLI under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keylink-e2e-cli"))
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Python with stock Google Tink that `cargo xtask setup` installs. Fails loudly (never
/// skips) when it is missing.
pub fn python() -> PathBuf {
    let p = std::env::var_os("KEYLINK_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/emulators/venv/bin/python"));
    assert!(
        p.exists(),
        "Python with tink not found at {}: run `cargo xtask test` (or `cargo xtask setup` once)",
        p.display()
    );
    p
}

/// What a CLI run did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the CLI in `cwd` with a clean environment for keylink's own variables.
pub fn keylink(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("KEYLINK_MASTER_KEY")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the CLI");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Checks `encrypted` against `original` with stock Tink and the keys export: every PII cell
/// must decrypt to the original value, every other cell must be unchanged.
pub fn tink_check(
    keys: &Path,
    encrypted: &Path,
    original: &Path,
    pii: &str,
    format: &str,
) -> String {
    let script = root().join("tests/python/tink_decrypt.py");
    let out = Command::new(python())
        .arg(&script)
        .args(["--keys"])
        .arg(keys)
        .arg("--encrypted")
        .arg(encrypted)
        .arg("--original")
        .arg(original)
        .args(["--pii", pii, "--format", format])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stock Tink could not decrypt keylink's output:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Checks derived output `derived` (the job's `derived_data[index]`) row for row against the
/// independent Python oracle of SPEC §3.
pub fn oracle_check(
    d: &JobDir,
    job: &str,
    contract: &str,
    input: &str,
    derived: &str,
    index: usize,
) -> String {
    let p = |rel: &str| d.path().join(rel);
    let out = Command::new(python())
        .arg(root().join("tests/python/derived_oracle.py"))
        .arg("--job")
        .arg(p(job))
        .arg("--contract")
        .arg(p(contract))
        .arg("--input")
        .arg(p(input))
        .arg("--keys")
        .arg(p("out/keys.csv"))
        .arg("--derived")
        .arg(p(derived))
        .arg("--index")
        .arg(index.to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "derived output {derived} differs from the oracle:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A job directory: data/, contracts/, job.json, keylink.yaml.
pub struct JobDir {
    pub dir: tempfile::TempDir,
}

impl JobDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("contracts")).unwrap();
        std::fs::write(
            dir.path().join("keylink.yaml"),
            "connectors:\n  files: { type: local, root: . }\ncontracts: ./contracts\n\
             key_store: { type: embedded, path: ./keys.db }\n",
        )
        .unwrap();
        JobDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path().join(rel).exists()
    }

    pub fn run(&self, args: &[&str]) -> Run {
        keylink(self.path(), args)
    }
}

/// A contract: keyField SessionId, PII Email (1), UserName (2), `extra` PII fields, an e-mail
/// validation.
pub fn contract(extra_pii: &str) -> String {
    format!(
        r#"{{
  "ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
  "keyField": "SessionId",
  "dataSubjectField": "UserId",
  "piiFields": {{ "Email": 1, "UserName": 2 {extra_pii} }},
  "validations": [ {{ "field": "Email", "type": "regex", "value": "^[^@]+@[^@]+$" }} ]
}}"#
    )
}

/// A job reading `data/<glob>` in `format`, writing out/encrypted.<ext> and out/keys.csv.
pub fn job(glob: &str, format: &str, extra: &str) -> String {
    let ext = if format == "jsonl" { "jsonl" } else { "csv" };
    format!(
        r#"{{
  "source_data": {{ "data_connector_ref": {{ "name": "files" }}, "path_prefix": "data",
                   "file_name": "{glob}", "data_type": {{ "{format}": {{}} }} }},
  "consent": {{ "default_consent_levels": [0],
               "consent_level_extractor": {{ "field": "Consent" }} }},
  "encryption": {{ "timestamp_config": {{ "field": "Time", "format": "yyyy-MM-dd HH:mm:ss",
                                         "default_time_zone": {{ "id": "Europe/Amsterdam" }} }}
                  {extra} }},
  "event_contract_ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
  "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "files" }},
                                    "path_prefix": "out", "file_name": "encrypted.{ext}" }} }},
  "encryption_keys_data": {{ "target": {{ "data_connector_ref": {{ "name": "files" }},
                                          "path_prefix": "out", "file_name": "keys.csv" }} }}
}}"#
    )
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A `keylink run JOB --watch` process (issue #16).
pub struct Watcher {
    pub child: std::process::Child,
    pub cwd: PathBuf,
}

impl Watcher {
    /// Starts a watcher of `job` in `cwd` with `extra` arguments; its output goes to
    /// `watch-<pid>.log` in `cwd`.
    pub fn start(cwd: &Path, job: &str, extra: &[&str]) -> Self {
        let log = std::fs::File::create(cwd.join("watch.log")).unwrap();
        let child = Command::new(bin())
            .args(["run", job, "--watch", "--interval", "1", "--json"])
            .args(extra)
            .current_dir(cwd)
            .env_remove("KEYLINK_MASTER_KEY")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the watcher");
        Watcher {
            child,
            cwd: cwd.to_path_buf(),
        }
    }

    /// Waits (bounded: 60 s) until the watcher has started (its first event is logged).
    pub fn wait_started(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.log().contains("\"event\":\"started\"") {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher did not start within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops it with SIGTERM (once it has started) and returns its exit code (bounded wait).
    pub fn terminate(mut self) -> i32 {
        self.wait_started();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cwd.join("watch.log")).unwrap_or_default()
    }
}

/// The entries of a watch state file, by path (`keylink watch-status --json`).
pub fn watch_state(cwd: &Path, job: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let r = keylink(cwd, &["watch-status", job, "--json"]);
    if r.code != 0 {
        return Default::default();
    }
    r.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["path"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Waits (bounded: 90 s) until `done` holds for the watch state; panics with the watcher's log.
pub fn wait_for(
    w: &Watcher,
    job: &str,
    what: &str,
    done: impl Fn(&std::collections::BTreeMap<String, serde_json::Value>) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        if done(&watch_state(&w.cwd, job)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 90 s for {what}; watcher log:\n{}",
            w.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Fails if any file under the job directory — outputs, temporary files (hidden ones too), the
/// key store, logs — holds one of `markers` (strings that occur only in plaintext PII values),
/// except the inputs (`data/`), the contracts and the `allowed` files (relative paths: derived
/// outputs that decrypt those fields for their purpose).
pub fn assert_no_plaintext(d: &JobDir, markers: &[&str], allowed: &[&str]) {
    let leaks: Vec<String> = files_under(d.path())
        .into_iter()
        .filter(|f| !f.starts_with("data/") && !f.starts_with("contracts/"))
        .filter(|f| !allowed.contains(&f.as_str()))
        .filter(|f| {
            let bytes = std::fs::read(d.path().join(f)).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            markers.iter().any(|m| text.contains(m))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "plaintext PII outside the allowed files: {leaks:?}"
    );
}
