//! What the tests against the Kafka broker share: its address, a client config with low group
//! timeouts (SERVICES.md), unique names per test, a runtime.

use keylink_connector_kafka::KafkaConfig;

/// The broker `cargo xtask` started. Fails loudly (never skips) when it is not set.
pub fn broker() -> String {
    std::env::var("KEYLINK_TEST_KAFKA").expect(
        "KEYLINK_TEST_KAFKA is not set: start a broker with `cargo xtask kafka start` (or run \
         `cargo xtask test`), then export the address it prints",
    )
}

/// The connector config for [`broker`], with consumer-group timeouts low enough for tests.
pub fn kafka() -> KafkaConfig {
    KafkaConfig::new(broker())
        .with_property("session.timeout.ms", "6000")
        .with_property("heartbeat.interval.ms", "1000")
        .with_property("max.poll.interval.ms", "7000")
}

/// `name` made unique to this moment and process: topics and groups of one test.
pub fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{n:x}-{}", std::process::id())
}

/// A multi-threaded runtime for the async clients.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A running `keylink stream stream.json` in `cwd`, its output in a log file there. Dropped, it
/// is killed: a test that failed half-way leaves no process behind.
pub struct Streamer {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Streamer {
    /// Starts it with `extra` arguments after the job file.
    pub fn start(cwd: &std::path::Path, extra: &[&str]) -> Self {
        use std::process::{Command, Stdio};
        let log = cwd.join(format!("stream-{}.log", unique("run")));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(super::bin())
            .args(["stream", "stream.json"])
            .args(extra)
            .current_dir(cwd)
            .env_remove("KEYLINK_MASTER_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start keylink stream");
        Streamer { child, log }
    }

    /// What it has printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reaped.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit code and the log. Fails unless it ends `within`.
    pub fn terminate(&mut self, within: std::time::Duration) -> (i32, String) {
        use std::time::{Duration, Instant};
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s.code().unwrap_or(-1), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "keylink stream did not stop within {within:?} of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        // after kill9 or terminate: the child is reaped, and this does nothing
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
