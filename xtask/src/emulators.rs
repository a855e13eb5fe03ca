//! Emulators the tests run against: installed into the test virtualenv, started on loopback,
//! waited for, and stopped by the PID we started (never by name).
//!
//! ```text
//! cargo xtask emulators start    start a moto S3 server (port 9000, or a free one) and a
//!                                fake-gcs-server (a free port), and print the environment for
//!                                `cargo test`
//! cargo xtask emulators status   whether the ones `start` left running answer
//! cargo xtask emulators stop     stop them (by the PIDs `start` recorded)
//! cargo xtask bench s3 [--mib N] a 1 GiB (or N MiB) object copy through the connector next to
//!                                the same copy with boto3, with peak memory
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::copy_bench;
use crate::service::Service;

/// Pinned: the S3 emulator (see shared/SERVICES.md).
pub const MOTO_VERSION: &str = "5.2.5";
/// The S3 emulator's usual port; a free one is taken when it is busy.
const S3_PORT: u16 = 9000;

/// Installs the emulators into the virtualenv `venv` (idempotent: a marker file per version).
pub fn install(venv: &Path) -> Result<()> {
    let marker = venv.join(format!(".keylink-moto-{MOTO_VERSION}"));
    if marker.exists() {
        return Ok(());
    }
    crate::run(Command::new(venv.join("bin/python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("moto[server]=={MOTO_VERSION}"),
    ]))
    .context("installing the S3 emulator (moto) from PyPI")?;
    std::fs::write(&marker, "")?;
    Ok(())
}

/// A running moto S3 server that we started. Dropping it kills exactly that process.
pub struct S3Emulator {
    service: Service,
    port: u16,
    server: PathBuf,
}

impl S3Emulator {
    /// Starts `moto_server` from `venv` on 127.0.0.1 (port 9000, or a free port if 9000 is
    /// taken) and waits until it answers.
    pub fn start(venv: &Path) -> Result<Self> {
        let server = venv.join("bin/moto_server");
        if !server.exists() {
            bail!(
                "{} is missing: run `cargo xtask setup` (or `cargo xtask test`)",
                server.display()
            );
        }
        let port = if port_is_free(S3_PORT) {
            S3_PORT
        } else {
            let p = free_port()?;
            eprintln!("xtask: port {S3_PORT} is busy; the S3 emulator uses port {p}");
            p
        };
        let log = venv
            .parent()
            .unwrap_or(venv)
            .join(format!("moto-{port}.log"));
        let mut cmd = Command::new(&server);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let started = Instant::now();
        let service = Service::start("S3 emulator", cmd, &log, Duration::from_millis(100), || {
            http_ok(port, "/moto-api/")
        })?;
        let emulator = S3Emulator {
            service,
            port,
            server,
        };
        eprintln!(
            "xtask: S3 emulator (moto {MOTO_VERSION}, pid {}) ready on {} in {:.1} s",
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

    /// The environment the tests read: the SDK's standard variables and ours.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("KEYLINK_TEST_S3_ENDPOINT", self.endpoint()),
            // for tests that start (and kill) an emulator of their own
            (
                "KEYLINK_TEST_MOTO_SERVER",
                self.server.display().to_string(),
            ),
        ]
    }

    /// Leaves the emulator running after xtask exits (`emulators start`); returns its PID.
    fn detach(self) -> u32 {
        self.service.detach()
    }

    /// Stops the emulator (kills the process we started, by its PID, and reaps it).
    pub fn stop(self) {
        self.service.stop();
    }
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Whether `GET path` on 127.0.0.1:`port` answers 200.
pub(crate) fn http_ok(port: u16, path: &str) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

// ------------------------------------------------------------------ cargo xtask emulators …

/// An emulator `emulators start` leaves running: its state file, the name its command line
/// contains (a PID that was reused by another program is not ours) and its readiness path.
struct Kept {
    name: &'static str,
    state: PathBuf,
    command_contains: &'static str,
    ready_path: &'static str,
}

impl Kept {
    fn all(dir: &Path) -> [Kept; 2] {
        [
            Kept {
                name: "S3 emulator",
                state: dir.join("moto.pid"),
                command_contains: "moto_server",
                ready_path: "/moto-api/",
            },
            Kept {
                name: "GCS emulator",
                state: dir.join("fake-gcs.pid"),
                command_contains: "fake-gcs-server",
                ready_path: "/storage/v1/b",
            },
        ]
    }

    /// The PID and port recorded, if the process is still the one we started.
    fn running(&self) -> Option<(u32, u16)> {
        let text = std::fs::read_to_string(&self.state).ok()?;
        let (pid, port) = text.trim().split_once(' ')?;
        let (pid, port) = (pid.parse().ok()?, port.parse().ok()?);
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(self.command_contains))
            .then_some((pid, port))
    }
}

/// `cargo xtask emulators start|stop|status`: emulators for running tests by hand.
pub fn command(args: &[&str], emulators_dir: &Path) -> Result<()> {
    let venv = emulators_dir.join("venv");
    let kept = Kept::all(emulators_dir);
    match args {
        ["start"] => {
            for k in &kept {
                if let Some((pid, port)) = k.running() {
                    bail!(
                        "the {} is already running (pid {pid}, port {port}); `cargo xtask \
                         emulators stop` first",
                        k.name
                    );
                }
            }
            crate::setup()?;
            let s3 = S3Emulator::start(&venv)?;
            let gcs = crate::gcs::GcsEmulator::start(&venv)?;
            let mut env = s3.env();
            env.extend(gcs.env());
            let (s3_port, gcs_port) = (s3.port, gcs.port());
            let s3_pid = s3.detach();
            std::fs::write(&kept[0].state, format!("{s3_pid} {s3_port}\n"))?;
            let gcs_pid = gcs.detach();
            std::fs::write(&kept[1].state, format!("{gcs_pid} {gcs_port}\n"))?;
            println!(
                "# the S3 emulator runs as pid {s3_pid}, the GCS emulator as pid {gcs_pid}; for the tests:"
            );
            for (k, v) in env {
                println!("export {k}={v}");
            }
            Ok(())
        }
        ["status"] => {
            for k in &kept {
                match k.running() {
                    Some((pid, port)) => println!(
                        "{}: pid {pid}, http://127.0.0.1:{port}, {}",
                        k.name,
                        if http_ok(port, k.ready_path) {
                            "answering"
                        } else {
                            "not answering"
                        }
                    ),
                    None => println!("{}: not running", k.name),
                }
            }
            Ok(())
        }
        ["stop"] => {
            for k in &kept {
                match k.running() {
                    Some((pid, _)) => {
                        crate::run(Command::new("kill").arg(pid.to_string()))?;
                        println!("{} (pid {pid}) stopped", k.name);
                    }
                    None => println!("{}: not running", k.name),
                }
                let _ = std::fs::remove_file(&k.state);
            }
            Ok(())
        }
        _ => bail!("usage: cargo xtask emulators <start | status | stop>"),
    }
}

// ------------------------------------------------------------------ cargo xtask bench s3

/// `cargo xtask bench s3 [--mib N]`: copies an N MiB object (default 1 GiB) within the emulator
/// through the connector (download → upload, streaming) and with boto3 (`get_object` body into
/// `upload_fileobj`), and reports time, throughput and peak memory of each.
pub fn bench_s3(args: &[&str]) -> Result<()> {
    let mib = copy_bench::mib_option(args, "s3")?;
    // boto3 (the baseline) comes with moto
    let env = crate::setup()?;
    let venv = env
        .python
        .parent()
        .and_then(Path::parent)
        .context("the virtualenv of the test tools")?
        .to_path_buf();
    let copier = copy_bench::build_example("keylink-connector-s3", "s3-copy")?;
    let emulator = S3Emulator::start(&venv)?;
    let size = mib << 20;

    // the source object, written by boto3 (not measured)
    let boto = |script: &str, args: &[String]| {
        let mut c = Command::new(&env.python);
        c.arg("-c").arg(script).args(args).envs(emulator.env());
        c
    };
    crate::run(&mut boto(
        BOTO3_PREPARE,
        &["bench".into(), "source.bin".into(), size.to_string()],
    ))?;

    let measured =
        |program: &Path, args: &[&str]| copy_bench::measure_with(&emulator.env(), program, args);
    // moto is the bottleneck and its speed varies from run to run: two rounds, alternating;
    // the faster time and the larger peak memory of each count
    let mut runs: [Vec<crate::Measured>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        runs[0].push(measured(
            &copier,
            &["bench", "source.bin", "copy-keylink.bin"],
        )?);
        runs[1].push(measured(
            &env.python,
            &["-c", BOTO3_COPY, "bench", "source.bin", "copy-boto3.bin"],
        )?);
    }
    let [ours, theirs] = runs.map(|r| copy_bench::best(&r));
    crate::run(&mut boto(
        BOTO3_VERIFY,
        &[
            "bench".into(),
            size.to_string(),
            "source.bin".into(),
            "copy-keylink.bin".into(),
            "copy-boto3.bin".into(),
        ],
    ))?;
    emulator.stop();

    copy_bench::print_table(
        &format!(
            "S3 copy of a {mib} MiB object (download → upload) against moto {MOTO_VERSION} on \
             loopback"
        ),
        size,
        &[
            ("keylink-connector-s3 (Rust SDK)".into(), &ours),
            ("boto3 get_object → upload_fileobj".into(), &theirs),
        ],
    );
    Ok(())
}

const BOTO3_PREPARE: &str = r#"
import os, sys, boto3
bucket, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3")
s3.create_bucket(Bucket=bucket)
class Gen:
    """size pseudo-random bytes, generated as they are read"""
    def __init__(self):
        self.left = size
        self.block = os.urandom(1 << 20)
    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        out = (self.block * (n // len(self.block) + 1))[:n]
        return out
s3.upload_fileobj(Gen(), bucket, key)
print("source object:", s3.head_object(Bucket=bucket, Key=key)["ContentLength"], "bytes")
"#;

const BOTO3_COPY: &str = r#"
import sys, boto3
bucket, src, dst = sys.argv[1:4]
s3 = boto3.client("s3")
body = s3.get_object(Bucket=bucket, Key=src)["Body"]
s3.upload_fileobj(body, bucket, dst)
"#;

const BOTO3_VERIFY: &str = r#"
import hashlib, sys, boto3
bucket, size, src, copies = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
s3 = boto3.client("s3")
def digest(key):
    h, n = hashlib.sha256(), 0
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        h.update(chunk)
        n += len(chunk)
    assert n == size, f"{key}: {n} bytes, expected {size}"
    return h.hexdigest()
want = digest(src)
for k in copies:
    assert digest(k) == want, f"{k} differs from {src}"
print("copies verified (sha256):", ", ".join(copies), "- boto3", boto3.__version__)
"#;
