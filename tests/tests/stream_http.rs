//! `keylink stream` with the HTTP ingest gateway as its source (issue #13), writing to the tansu
//! broker that `cargo xtask test` starts (KEYLINK_TEST_KAFKA; fails loudly without it). All
//! data is synthetic.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use keylink_connector_kafka::KafkaConfig;
use keylink_core::connector::{BuildContext, ConnectorConfig};
use keylink_core::stream::Subscription;

fn broker() -> String {
    std::env::var("KEYLINK_TEST_KAFKA").expect(
        "KEYLINK_TEST_KAFKA is not set: start a broker with `cargo xtask kafka start` (or run \
         `cargo xtask test`), then export the address it prints",
    )
}

fn kafka() -> KafkaConfig {
    KafkaConfig::new(broker())
        .with_property("session.timeout.ms", "6000")
        .with_property("heartbeat.interval.ms", "1000")
        .with_property("max.poll.interval.ms", "7000")
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{n:x}-{}", std::process::id())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // a body over the limit may be refused before it is all sent
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn event(seq: usize) -> String {
    format!(
        r#"{{"Seq":{seq},"SessionId":"sess-{}","UserId":"cust-{seq}","Email":"gw{seq}@example.com","UserName":"Gateway Person {seq}","Time":"2024-04-03T12:00:00Z","Consent":"[1]"}}"#,
        seq % 4
    )
}

struct Gateway {
    child: Child,
    log: std::path::PathBuf,
    addr: String,
}

impl Gateway {
    fn start(cwd: &Path) -> Self {
        let log = cwd.join(format!("{}.log", unique("gw")));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(["stream", "stream.json"])
            .current_dir(cwd)
            .env_remove("KEYLINK_MASTER_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        // owned at once, so that a failed start still ends the process (Drop)
        let mut gw = Gateway {
            child,
            log,
            addr: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&gw.log).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                gw.addr = rest.lines().next().unwrap().trim().to_string();
                return gw;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not start within 60 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(&mut self) -> (i32, String) {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (
                    s.code().unwrap_or(-1),
                    std::fs::read_to_string(&self.log).unwrap_or_default(),
                );
            }
            assert!(Instant::now() < deadline, "no exit within 60 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // a test that failed half-way leaves no gateway behind (after terminate: a no-op)
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup(dir: &JobDir, encrypted_connector: &str, enc: &str, extra_source: &str) {
    dir.write("contracts/clicks.json", contract(""));
    dir.write(
        "keylink.yaml",
        format!(
            "connectors:\n  bus: {{ type: kafka, bootstrap_servers: \"{}\" }}\n  \
             deadbus: {{ type: kafka, bootstrap_servers: \"127.0.0.1:9\", properties: \
             {{ message.timeout.ms: \"1500\" }} }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
            broker()
        ),
    );
    dir.write(
        "stream.json",
        format!(
            r#"{{
  "source": {{ "http": {{ "listen": "127.0.0.1:0", "max_body_bytes": 4096 {extra_source} }} }},
  "data_contract_ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
  "consent": {{ "default_consent_levels": [0], "consent_level_extractor": {{ "field": "Consent" }} }},
  "encryption": {{ "timestamp_config": {{ "field": "Time", "format": "iso8601" }},
                  "batch_job_group_id": "clicks-gateway" }},
  "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "{encrypted_connector}" }},
                                   "topic": "{enc}" }} }}
}}"#
        ),
    );
}

fn read_all(rt: &tokio::runtime::Runtime, topic: &str, n: usize) -> Vec<String> {
    rt.block_on(async {
        let sub = Subscription {
            topic: topic.to_string(),
            group_id: unique("reader"),
        };
        let mut src = kafka()
            .build_message_source(&BuildContext::default(), &sub)
            .await
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while got.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} messages", got.len());
            for m in src.poll(100, Duration::from_millis(300)).await.unwrap() {
                got.push(String::from_utf8(m.payload.to_vec()).unwrap());
            }
        }
        got
    })
}

/// The gateway's answers: accepted and rejected events by index, 400, 413, health, metrics;
/// what it acknowledged is on the topic; SIGTERM ends it with 0.
#[test]
fn gateway_accepts_events_durably() {
    let rt = rt();
    let enc = unique("gw-enc");
    rt.block_on(kafka().create_topic(&enc, 1)).unwrap();
    let dir = JobDir::new();
    setup(&dir, "bus", &enc, "");
    let mut gw = Gateway::start(dir.path());
    let a = gw.addr.clone();

    let (code, body) = http(
        &a,
        "POST",
        "/events",
        "application/json",
        event(0).as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"], 1, "{body}");
    assert_eq!(v["rejected"], serde_json::json!([]));

    let lines = format!(
        "{}\n{}\n{}\n",
        event(1),
        r#"{"Seq":99,"Email":"nokey@example.com","Time":"2024-04-03T12:00:00Z"}"#,
        event(2)
    );
    let (code, body) = http(
        &a,
        "POST",
        "/events",
        "application/x-ndjson",
        lines.as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"], 2, "{body}");
    assert_eq!(v["rejected"][0]["index"], 1, "{body}");
    assert_eq!(v["rejected"][0]["reason"], "missing_key_field", "{body}");
    assert!(
        !body.contains("example.com"),
        "a value in the answer: {body}"
    );

    let (code, body) = http(&a, "POST", "/events", "application/json", b"not json");
    assert_eq!(code, 400, "{body}");
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000));
    let (code, _) = http(&a, "POST", "/events", "application/json", big.as_bytes());
    assert_eq!(code, 413);

    let (code, body) = http(&a, "GET", "/healthz", "text/plain", b"");
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = http(&a, "GET", "/metrics", "text/plain", b"");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("keylink_events_accepted_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keylink_events_rejected_total{reason=\"missing_key_field\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keylink_ack_latency_seconds_count 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("example.com"));

    // acknowledged means on the topic: the three accepted events, encrypted
    let got = read_all(&rt, &enc, 3);
    let mut seqs: Vec<u64> = got
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p).unwrap()["Seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    seqs.sort();
    assert_eq!(seqs, vec![0, 1, 2]);
    assert!(got.iter().all(|p| !p.contains("example.com")));

    let (code, log) = gw.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("3 events accepted, 1 rejected"), "{log}");
    assert!(!log.contains("example.com"), "{log}");
}

/// While the output is down nothing is accepted: 503, and /healthz says so.
#[test]
fn gateway_answers_503_while_an_output_is_down() {
    let dir = JobDir::new();
    setup(&dir, "deadbus", "nowhere", r#", "ack_timeout": "3s""#);
    let mut gw = Gateway::start(dir.path());
    let (code, body) = http(
        &gw.addr,
        "POST",
        "/events",
        "application/json",
        event(7).as_bytes(),
    );
    assert_eq!(code, 503, "{body}");
    assert!(!body.contains("accepted\":"), "{body}");
    let (code, _) = http(&gw.addr, "GET", "/healthz", "text/plain", b"");
    assert_eq!(code, 503);
    let (code, metrics) = http(&gw.addr, "GET", "/metrics", "text/plain", b"");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("keylink_events_accepted_total 0"),
        "{metrics}"
    );
    // graceful shutdown: a request in flight (waiting for the dead output) when SIGTERM comes
    // is still answered before the gateway exits
    let addr = gw.addr.clone();
    let in_flight = std::thread::spawn(move || {
        http(
            &addr,
            "POST",
            "/events",
            "application/json",
            event(8).as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, log) = gw.terminate();
    assert_eq!(code, 0, "{log}");
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(
        status, 503,
        "the request in flight was not answered: {body}"
    );
}
