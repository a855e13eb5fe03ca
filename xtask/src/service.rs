//! A process xtask starts for the tests (an emulator, the broker): spawned with its output in a
//! log file, waited on until it answers, stopped by the PID we started (SERVICES.md). Dropping
//! a [`Service`] kills exactly that process; [`Service::detach`] leaves it running for
//! `cargo xtask <service> start`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a service may take to answer after it was spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running process that we started.
pub struct Service {
    /// For messages: "S3 emulator", "Kafka broker".
    name: &'static str,
    child: Option<Child>,
}

impl Service {
    /// Spawns `cmd` with stdin closed and stdout and stderr to `log`, then polls `ready` every
    /// `poll` until it holds. Fails, naming the log, if the process exits first or does not
    /// get ready within [`READY_TIMEOUT`] (the process is killed then).
    pub fn start(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        poll: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let program = Path::new(cmd.get_program()).display().to_string();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let mut service = Service {
            name,
            child: Some(child),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = service
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten()
            {
                service.child = None;
                bail!(
                    "the {name} exited at start ({status}); see {}",
                    log.display()
                );
            }
            if ready() {
                return Ok(service);
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the {name} did not answer within {} s; see {}",
                    READY_TIMEOUT.as_secs(),
                    log.display()
                );
            }
            std::thread::sleep(poll);
        }
    }

    /// The PID of the process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Leaves the process running after xtask exits; returns its PID (`… stop` ends it).
    #[allow(
        clippy::zombie_processes,
        reason = "it outlives us on purpose: `cargo xtask … stop` ends it, init reaps it"
    )]
    pub fn detach(mut self) -> u32 {
        self.child.take().map_or(0, |c| c.id())
    }

    /// Stops the process (kills the one we started, by its PID, and reaps it).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("xtask: {} (pid {pid}) stopped", self.name);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
