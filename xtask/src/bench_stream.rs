//! `cargo xtask bench stream [--requests N] [--singles S] [--concurrency C] [--batch K]`: the
//! HTTP gateway of `keylink stream` on a tansu broker, each request answered only after the
//! encrypted and the derived topic acknowledged. Three runs against one gateway: JSON Lines
//! batches of K (default 500) as fast as C connections go; S single-event requests; batches of K
//! paced at half the first run's rate (the latency a loaded-but-not-saturated gateway gives).
//! For each: events/s and ack latency (p50, p99); then the gateway's peak memory (VmHWM). Next to
//! it, the ceiling: a plain rdkafka producer (idempotent, acks=all) sending as many messages of
//! the same size, C × K in flight.
//!
//! Release builds of a small keylink (`kafka,http,jsonl,local`) and of the baseline
//! (`connectors/kafka/examples/produce_baseline.rs`). Writes `target/bench/stream.md`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, run, target_dir};

pub fn bench(args: &[&str]) -> Result<()> {
    let (mut requests, mut singles, mut concurrency, mut batch) =
        (400usize, 10_000usize, 16usize, 500usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{what} needs a number"))?
                .parse()
                .with_context(|| format!("{what} needs a number"))
        };
        match *a {
            "--requests" => requests = num("--requests")?.max(1),
            "--singles" => singles = num("--singles")?.max(1),
            "--concurrency" => concurrency = num("--concurrency")?.max(1),
            "--batch" => batch = num("--batch")?.max(1),
            other => bail!("unknown bench stream option {other}"),
        }
    }
    crate::setup()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "keylink",
        "--no-default-features",
        "--features",
        "kafka,http,jsonl,local",
    ]))?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "keylink-connector-kafka",
        "--example",
        "produce_baseline",
    ]))?;
    let release = target_dir().join("release");
    let broker = crate::kafka::KafkaBroker::start(&target_dir().join("emulators/venv"))?;
    let work = target_dir().join("bench/stream");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("contracts"))?;
    write_job(&work, &broker.bootstrap())?;

    // the gateway
    let log = std::fs::File::create(work.join("keylink.log"))?;
    let mut child = Command::new(release.join("keylink"))
        .args(["stream", "stream.json"])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting keylink stream")?;
    let pid = child.id();
    let result = (|| -> Result<(Stats, Stats, Stats, u64, usize)> {
        let addr = wait_for_address(&work.join("keylink.log"), &mut child)?;
        let event_bytes = event(0, 0).len();
        // a warm-up request creates the topics' producers' connections
        post(&addr, &body(0, batch), batch)?;
        eprintln!(
            "xtask: {requests} requests × {batch} events, {concurrency} at a time, to http://{addr}"
        );
        let full = load(&addr, requests, concurrency, batch, None, 1)?;
        eprintln!("xtask: {full:?}");
        eprintln!("xtask: {singles} single-event requests, {concurrency} at a time");
        let one = load(&addr, singles, concurrency, 1, None, 1_000_000)?;
        eprintln!("xtask: {one:?}");
        // half the first run's rate: each connection sends one request every `every`
        let every =
            Duration::from_secs_f64((concurrency * batch) as f64 / (full.events_per_second / 2.0));
        eprintln!("xtask: {requests} requests × {batch} events at half that rate");
        let half = load(&addr, requests, concurrency, batch, Some(every), 2_000_000)?;
        eprintln!("xtask: {half:?}");
        Ok((full, one, half, peak_kib(pid), event_bytes))
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let (full, one, half, peak, event_bytes) = result?;

    // the ceiling: as many messages as the first run's events, as many in flight as it had
    let inflight = (concurrency * batch).min(10_000);
    let out = Command::new(release.join("examples/produce_baseline"))
        .args([
            broker.bootstrap().as_str(),
            "bench-baseline",
            &(requests * batch).to_string(),
            &inflight.to_string(),
            &event_bytes.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running the baseline producer")?;
    if !out.status.success() {
        bail!("the baseline producer failed");
    }
    let baseline = String::from_utf8_lossy(&out.stdout).trim().to_string();
    broker.stop();

    let row = |name: &str, s: &Stats| {
        format!(
            "| {name} | {:.0} | {:.1} | {:.1} |\n",
            s.events_per_second, s.p50_ms, s.p99_ms
        )
    };
    let report = format!(
        "# keylink stream: HTTP gateway → Kafka (tansu), release build\n\n\
         Events of {event_bytes} bytes, {concurrency} concurrent keep-alive connections; each \
         answer waits for the encrypted and the derived topic (acks=all): 2 messages per event. \
         Latency is per request.\n\n\
         | | events/s | p50 ack ms | p99 ack ms |\n|---|---|---|---|\n\
         {}{}{}\
         | plain rdkafka producer (1 topic, {inflight} in flight, each awaited) | {} | {} | {} |\n\n\
         gateway peak memory (VmHWM): {:.0} MiB\n\n\
         baseline raw: `{baseline}`\n",
        row(&format!("gateway, {requests} × {batch} events"), &full),
        row(&format!("gateway, {singles} × 1 event"), &one),
        row(
            &format!("gateway, {requests} × {batch} events at half the rate"),
            &half
        ),
        field(&baseline, "per_second"),
        field(&baseline, "p50_ms"),
        field(&baseline, "p99_ms"),
        peak as f64 / 1024.0,
    );
    std::fs::create_dir_all(target_dir().join("bench"))?;
    std::fs::write(target_dir().join("bench/stream.md"), &report)?;
    print!("{report}");
    Ok(())
}

/// The peak resident memory of process `pid` in KiB (0 if unknown).
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn field(json: &str, key: &str) -> String {
    json.split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .unwrap_or("?")
        .to_string()
}

fn write_job(work: &Path, bootstrap: &str) -> Result<()> {
    std::fs::write(
        work.join("contracts/clicks.json"),
        r#"{ "ref": { "handle": "bench", "name": "clicks", "version": "1.0.0" },
  "keyField": "SessionId", "dataSubjectField": "UserId",
  "piiFields": { "Email": 1, "UserName": 2, "UserId": 1 } }"#,
    )?;
    std::fs::write(
        work.join("keylink.yaml"),
        format!(
            "connectors:\n  bus: {{ type: kafka, bootstrap_servers: \"{bootstrap}\" }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n"
        ),
    )?;
    std::fs::write(
        work.join("stream.json"),
        r#"{
  "source": { "http": { "listen": "127.0.0.1:0", "max_body_bytes": 16777216 } },
  "data_contract_ref": { "handle": "bench", "name": "clicks", "version": "1.0.0" },
  "consent": { "default_consent_levels": [0], "consent_level_extractor": { "field": "Consent" } },
  "encryption": { "timestamp_config": { "field": "EventTime", "format": "iso8601" },
                  "batch_job_group_id": "bench" },
  "encrypted_data": { "target": { "data_connector_ref": { "name": "bus" }, "topic": "bench.encrypted" } },
  "derived_data": [ { "target": { "data_connector_ref": { "name": "bus" }, "topic": "bench.analytics" },
                      "consent_levels": [1], "consent_level_type": "GRANULAR" } ]
}"#,
    )?;
    Ok(())
}

fn wait_for_address(log: &Path, child: &mut Child) -> Result<String> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("listening on http://").nth(1) {
            return Ok(rest.lines().next().unwrap_or("").trim().to_string());
        }
        if let Some(status) = child.try_wait()? {
            bail!("keylink stream exited ({status}):\n{text}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("keylink stream did not listen within 60 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A synthetic clickstream event (~300 bytes).
fn event(req: usize, i: usize) -> String {
    let n = req * 7919 + i;
    format!(
        r#"{{"SessionId":"sess-{:06}","UserId":"cust-{:06}","Email":"user{n}@example.com","UserName":"User Number {n}","Page":"/products/{}","Referrer":"https://search.example.com/?q=item{}","EventTime":"2024-04-01T{:02}:{:02}:00Z","Consent":"[{}]"}}"#,
        n % 5000,
        n % 20000,
        n % 977,
        n % 131,
        n / 60 % 24,
        n % 60,
        n % 3
    )
}

fn body(req: usize, batch: usize) -> String {
    (0..batch)
        .map(|i| event(req, i))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One POST on a fresh keep-alive-less connection; returns when the answer is read.
fn post(addr: &str, body: &str, batch: usize) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    request(&mut s, addr, body, batch)
}

fn request(s: &mut TcpStream, addr: &str, body: &str, batch: usize) -> Result<()> {
    let ct = if batch > 1 {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    write!(
        s,
        "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // status line, headers, then Content-Length bytes
    let mut r = BufReader::new(&mut *s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("the gateway answered {}", line.trim());
    }
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(())
}

#[derive(Debug)]
struct Stats {
    events_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `requests` POSTs over `concurrency` keep-alive connections; with `every`, each connection
/// starts one request per `every` (paced load). Events are numbered from request `first`.
fn load(
    addr: &str,
    requests: usize,
    concurrency: usize,
    batch: usize,
    every: Option<Duration>,
    first: usize,
) -> Result<Stats> {
    let addr: Arc<str> = addr.into();
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let addr = addr.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut s = TcpStream::connect(&*addr)?;
                s.set_nodelay(true)?;
                let mut lat = Vec::new();
                let mut r = w;
                // paced connections start spread over one interval
                let mut next = Instant::now()
                    + every.map_or(Duration::ZERO, |e| e.mul_f64(w as f64 / concurrency as f64));
                while r < requests {
                    if let Some(e) = every {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += e;
                    }
                    let b = body(first + r, batch);
                    let t = Instant::now();
                    request(&mut s, &addr, &b, batch)?;
                    lat.push(t.elapsed());
                    r += concurrency;
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??,
        );
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
    Ok(Stats {
        events_per_second: (lat.len() * batch) as f64 / wall,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}
