//! The Azure Blob emulator (Azurite, from npm, pinned by the committed `xtask/azurite`
//! package.json and lock file): installed under target/emulators/azurite with `npm ci`, started
//! on a free loopback port, waited for, and stopped by the PID we started (never by name).
//!
//! ```text
//! cargo xtask azurite start|status|stop   an Azurite for running the Azure tests by hand
//! cargo xtask bench azure [--mib N]       a 1 GiB (or N MiB) blob copy through the connector
//!                                         next to Microsoft's Python client, with peak memory
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::copy_bench;
use crate::service::Service;

/// Pinned (also in xtask/azurite/package.json and its lock file).
pub const AZURITE_VERSION: &str = "3.35.0";
/// Azurite's usual blob port; a free one is taken when it is busy.
const BLOB_PORT: u16 = 10000;
/// Azurite's public development account and key (documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
/// See [`ACCOUNT`].
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The flags of shared/SERVICES.md: the SDK's newer API version, no telemetry (no network),
/// nothing on disk, quiet.
const FLAGS: [&str; 5] = [
    "--loose",
    "--skipApiVersionCheck",
    "--disableTelemetry",
    "--inMemoryPersistence",
    "--silent",
];

fn install_dir(emulators: &Path) -> PathBuf {
    emulators.join("azurite")
}

/// The `azurite-blob` launcher.
pub fn server(emulators: &Path) -> PathBuf {
    install_dir(emulators).join("node_modules/.bin/azurite-blob")
}

/// Installs Azurite under `emulators/azurite` with `npm ci` from the committed lock file
/// (idempotent: a marker per version).
pub fn install(emulators: &Path) -> Result<()> {
    let dir = install_dir(emulators);
    let marker = dir.join(format!(".keylink-azurite-{AZURITE_VERSION}"));
    if marker.exists() && server(emulators).exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    let pinned = crate::root().join("xtask/azurite");
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(pinned.join(f), dir.join(f))
            .with_context(|| format!("copying xtask/azurite/{f}"))?;
    }
    crate::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
    )
    .context(
        "installing the Azure emulator (Azurite) from npm: `npm ci` failed (are node >= 18 and \
         npm installed?)",
    )?;
    std::fs::write(&marker, "")?;
    Ok(())
}

/// A running Azurite that we started. Dropping it kills exactly that process.
pub struct AzureEmulator {
    service: Service,
    port: u16,
    server: PathBuf,
}

impl AzureEmulator {
    /// Starts Azurite's blob service from `emulators` on 127.0.0.1 (port 10000, or a free one)
    /// and waits until it answers.
    pub fn start(emulators: &Path) -> Result<Self> {
        let server = server(emulators);
        if !server.exists() {
            bail!(
                "{} is missing: run `cargo xtask setup` (or `cargo xtask test`)",
                server.display()
            );
        }
        let port = if TcpListener::bind(("127.0.0.1", BLOB_PORT)).is_ok() {
            BLOB_PORT
        } else {
            let p = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
            eprintln!("xtask: port {BLOB_PORT} is busy; Azurite uses port {p}");
            p
        };
        let log = emulators.join(format!("azurite-{port}.log"));
        let mut cmd = Command::new(&server);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(FLAGS)
            .current_dir(install_dir(emulators));
        let started = Instant::now();
        let service = Service::start(
            "Azure emulator",
            cmd,
            &log,
            Duration::from_millis(100),
            || answers(port),
        )?;
        let emulator = AzureEmulator {
            service,
            port,
            server,
        };
        eprintln!(
            "xtask: Azure emulator (Azurite {AZURITE_VERSION}, pid {}) ready on {} in {:.1} s",
            emulator.service.pid(),
            emulator.endpoint(),
            started.elapsed().as_secs_f64()
        );
        Ok(emulator)
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1`: the blob endpoint of the dev account.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The environment the tests read: Azure's standard connection string and ours.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                format!(
                    "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};\
                     BlobEndpoint={};",
                    self.endpoint()
                ),
            ),
            ("KEYLINK_TEST_AZURE_ENDPOINT", self.endpoint()),
            // for tests that start (and kill) an emulator of their own
            ("KEYLINK_TEST_AZURITE", self.server.display().to_string()),
        ]
    }

    /// Leaves the emulator running after xtask exits (`azurite start`); returns its PID.
    fn detach(self) -> u32 {
        self.service.detach()
    }

    /// Stops the emulator (kills the process we started, by its PID, and reaps it).
    pub fn stop(self) {
        self.service.stop();
    }
}

/// Whether an HTTP server answers on 127.0.0.1:`port` (any status: an unsigned request gets a
/// 403 from Azurite).
fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "GET /{ACCOUNT}?comp=list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

// ------------------------------------------------------------------ cargo xtask azurite …

/// `cargo xtask azurite start|stop|status`: an emulator for running the Azure tests by hand.
pub fn command(args: &[&str], emulators: &Path) -> Result<()> {
    let state = emulators.join("azurite.pid");
    let recorded = || -> Option<(u32, u16)> {
        let text = std::fs::read_to_string(&state).ok()?;
        let (pid, port) = text.trim().split_once(' ')?;
        Some((pid.parse().ok()?, port.parse().ok()?))
    };
    // Only a process that is still an Azurite counts as ours (the PID may have been reused).
    let alive = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("azurite"))
    };
    match args {
        ["start"] => {
            if let Some((pid, port)) = recorded().filter(|(pid, _)| alive(*pid)) {
                bail!(
                    "an Azurite is already running (pid {pid}, port {port}); `cargo xtask azurite stop` first"
                );
            }
            install(emulators)?;
            let emulator = AzureEmulator::start(emulators)?;
            let (port, env) = (emulator.port, emulator.env());
            let pid = emulator.detach();
            std::fs::write(&state, format!("{pid} {port}\n"))?;
            println!("# Azurite runs as pid {pid}; for the tests:");
            for (k, v) in env {
                println!("export {k}='{v}'");
            }
            Ok(())
        }
        ["status"] => {
            match recorded() {
                Some((pid, port)) if alive(pid) => println!(
                    "Azurite: pid {pid}, http://127.0.0.1:{port}/{ACCOUNT}, {}",
                    if answers(port) {
                        "answering"
                    } else {
                        "not answering"
                    }
                ),
                _ => println!("Azurite: not running"),
            }
            Ok(())
        }
        ["stop"] => {
            match recorded() {
                Some((pid, _)) if alive(pid) => {
                    crate::run(Command::new("kill").arg(pid.to_string()))?;
                    println!("Azurite (pid {pid}) stopped");
                }
                _ => println!("Azurite: not running"),
            }
            let _ = std::fs::remove_file(&state);
            Ok(())
        }
        _ => bail!("usage: cargo xtask azurite <start | status | stop>"),
    }
}

// ------------------------------------------------------------------ cargo xtask bench azure

/// Pinned: the baseline, Microsoft's Python client (installed into the test virtualenv for the
/// benchmark only).
const PY_CLIENT_VERSION: &str = "12.31.1";

/// `cargo xtask bench azure [--mib N]`: copies an N MiB blob (default 1 GiB) within Azurite
/// through the connector (download → upload, streaming) and with Microsoft's Python client
/// (`download_blob` stream into `upload_blob`, both with 4 transfers at once), and reports time,
/// throughput and peak memory of each.
pub fn bench(args: &[&str]) -> Result<()> {
    let mib = copy_bench::mib_option(args, "azure")?;
    let env = crate::setup()?;
    crate::run(Command::new(&env.python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("azure-storage-blob=={PY_CLIENT_VERSION}"),
    ]))
    .context("installing Microsoft's Python client (azure-storage-blob) for the benchmark")?;
    let copier = copy_bench::build_example("keylink-connector-azure", "azure-copy")?;
    let emulators = crate::target_dir().join("emulators");
    let emulator = AzureEmulator::start(&emulators)?;
    let size = mib << 20;

    let python = |script: &str, args: &[String]| {
        let mut c = Command::new(&env.python);
        c.arg("-c").arg(script).args(args).envs(emulator.env());
        c
    };
    crate::run(&mut python(
        PY_PREPARE,
        &["bench".into(), "source.bin".into(), size.to_string()],
    ))?;
    let measured =
        |program: &Path, args: &[&str]| copy_bench::measure_with(&emulator.env(), program, args);
    // two rounds, alternating; the faster time and the larger peak memory of each count
    let mut runs: [Vec<crate::Measured>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        runs[0].push(measured(
            &copier,
            &["bench", "source.bin", "copy-keylink.bin"],
        )?);
        runs[1].push(measured(
            &env.python,
            &["-c", PY_COPY, "bench", "source.bin", "copy-python.bin"],
        )?);
    }
    let [ours, theirs] = runs.map(|r| copy_bench::best(&r));
    crate::run(&mut python(
        PY_VERIFY,
        &[
            "bench".into(),
            size.to_string(),
            "source.bin".into(),
            "copy-keylink.bin".into(),
            "copy-python.bin".into(),
        ],
    ))?;
    emulator.stop();

    copy_bench::print_table(
        &format!(
            "Azure blob copy of a {mib} MiB blob (download → upload) against Azurite \
             {AZURITE_VERSION} on loopback"
        ),
        size,
        &[
            ("keylink-connector-azure (Rust SDK 1.x)".into(), &ours),
            (
                "azure-storage-blob (Python) download→upload".into(),
                &theirs,
            ),
        ],
    );
    println!(
        "ratio (Python time / keylink time): {:.2}",
        theirs.seconds / ours.seconds
    );
    Ok(())
}

const PY_PREPARE: &str = r#"
import os, sys
from azure.storage.blob import BlobServiceClient
container, name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
svc = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
c = svc.get_container_client(container)
if not c.exists():
    c.create_container()
class Gen:
    """size pseudo-random bytes, generated as they are read"""
    def __init__(self):
        self.left = size
        self.block = os.urandom(1 << 20)
    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return (self.block * (n // len(self.block) + 1))[:n]
c.upload_blob(name, Gen(), length=size, overwrite=True, max_concurrency=4)
print("source blob:", c.get_blob_client(name).get_blob_properties().size, "bytes")
"#;

const PY_COPY: &str = r#"
import os, sys
from azure.storage.blob import BlobServiceClient
container, src, dst = sys.argv[1:4]
svc = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
c = svc.get_container_client(container)
stream = c.get_blob_client(src).download_blob(max_concurrency=4)
c.get_blob_client(dst).upload_blob(stream.chunks(), overwrite=True, max_concurrency=4)
"#;

const PY_VERIFY: &str = r#"
import hashlib, os, sys
import azure.storage.blob
from azure.storage.blob import BlobServiceClient
container, size, src, copies = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
svc = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
c = svc.get_container_client(container)
def digest(name):
    h, n = hashlib.sha256(), 0
    for chunk in c.get_blob_client(name).download_blob().chunks():
        h.update(chunk)
        n += len(chunk)
    assert n == size, f"{name}: {n} bytes, expected {size}"
    return h.hexdigest()
want = digest(src)
for k in copies:
    assert digest(k) == want, f"{k} differs from {src}"
print("copies verified (sha256):", ", ".join(copies), "- azure-storage-blob", azure.storage.blob.__version__)
"#;
