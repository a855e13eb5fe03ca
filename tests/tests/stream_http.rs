//! `keylink stream` with the HTTP ingest gateway as its source (issue #13), writing to the tansu
//! broker that `cargo xtask test` starts (KEYLINK_TEST_KAFKA; fails loudly without it). All
//! data is synthetic.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{Streamer, broker, kafka, rt, unique};
use common::*;
use keylink_connector_kafka::KafkaConfig;
use keylink_core::connector::{BuildContext, ConnectorConfig};
use keylink_core::stream::Subscription;

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

/// `keylink stream` serving HTTP, and the address it listens on.
struct Gateway {
    stream: Streamer,
    addr: String,
}

impl Gateway {
    fn start(cwd: &Path) -> Self {
        // owned at once, so that a failed start still ends the process (Streamer's Drop)
        let stream = Streamer::start(cwd, &[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = stream.log();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                let addr = rest.lines().next().unwrap().trim().to_string();
                return Gateway { stream, addr };
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not start within 60 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(&mut self) -> (i32, String) {
        self.stream.terminate(Duration::from_secs(60))
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

    // this job reads consent from the field Consent: an event that also carries its own
    // strmMeta.consentLevels is ambiguous, and rejected (SPEC §11)
    let own = event(3).replacen('{', r#"{"strmMeta":{"consentLevels":[1]},"#, 1);
    let (code, body) = http(&a, "POST", "/events", "application/json", own.as_bytes());
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"], 0, "{body}");
    assert_eq!(v["rejected"][0]["reason"], "bad_strm_meta", "{body}");
    assert!(
        v["rejected"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("ambiguous"),
        "{body}"
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
        metrics.contains("keylink_events_rejected_total{reason=\"bad_strm_meta\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keylink_ack_latency_seconds_count 3"),
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
    assert!(log.contains("3 events accepted, 2 rejected"), "{log}");
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

/// One event of the scale test: what was posted and what must come of it.
struct Posted {
    seq: usize,
    /// The event as posted.
    text: String,
    /// The event without its own strmMeta (what the encrypted topic must decrypt to).
    plain: String,
    /// Its consent: `Some(levels)` when accepted, `None` when it must be rejected.
    levels: Option<Vec<i32>>,
    /// The reason of a reject.
    reason: &'static str,
    /// The consent carried in strmMeta, as the oracle's consent field ("" when none).
    own: String,
}

/// The scale test's events: consent in `strmMeta.consentLevels` (at the start, middle or end of
/// the object), none (the default), and invalid ones that must be rejected.
fn scale_event(seq: usize) -> Posted {
    let base = format!(
        r#""Seq":{seq},"SessionId":"sess-{}","UserId":"cust-{}","Email":"sc{seq}@example.com","UserName":"Scale Person {seq}","Time":"2024-04-03T{:02}:17:00Z""#,
        seq % 1500,
        seq % 700,
        10 + seq % 3
    );
    let with_meta = |meta: &str| match seq % 3 {
        0 => format!(r#"{{"strmMeta":{meta},{base}}}"#),
        1 => {
            let (a, b) = base.split_at(base.find(",\"Email\"").unwrap());
            format!(r#"{{{a}, "strmMeta" : {meta}{b}}}"#)
        }
        _ => format!(r#"{{{base},"strmMeta":{meta}}}"#),
    };
    let plain = format!("{{{base}}}");
    let ok = |levels: &[i32], meta: Option<&str>| Posted {
        seq,
        text: meta.map_or_else(|| plain.clone(), with_meta),
        plain: plain.clone(),
        levels: Some(levels.to_vec()),
        reason: "",
        own: meta.map_or_else(String::new, |_| {
            format!(
                "[{}]",
                levels
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }),
    };
    let bad = |text: String, reason: &'static str| Posted {
        seq,
        text,
        plain: plain.clone(),
        levels: None,
        reason,
        own: String::new(),
    };
    match seq % 10 {
        0..=2 => ok(&[1], Some(r#"{"consentLevels":[1]}"#)),
        3 => ok(&[1, 2], Some(r#"{"consentLevels":[2,1]}"#)),
        4 => ok(&[2], Some(r#"{ "consentLevels": [ 2 ] }"#)),
        5 => ok(&[0], Some(r#"{"consentLevels":[0]}"#)),
        6 => ok(&[], Some(r#"{"consentLevels":[]}"#)),
        7 => ok(&[0], None),
        8 => bad(
            with_meta(if seq % 20 == 8 {
                r#"{"consentLevels":[1],"keyLink":"forged"}"#
            } else {
                r#"{"consentLevels":"[1]"}"#
            }),
            "bad_strm_meta",
        ),
        _ => bad(
            format!(
                r#"{{"Seq":{seq},"Email":"nokey{seq}@example.com","Time":"2024-04-03T10:00:00Z"}}"#
            ),
            "missing_key_field",
        ),
    }
}

/// Reads `topic` until it holds every seq of `want`, then until it is quiet for 2 s; returns
/// the messages by seq (a seq seen twice must be byte-identical).
fn read_by_seq(
    rt: &tokio::runtime::Runtime,
    topic: &str,
    want: &std::collections::BTreeSet<usize>,
) -> std::collections::BTreeMap<usize, String> {
    rt.block_on(async {
        let sub = Subscription {
            topic: topic.to_string(),
            group_id: unique("reader"),
        };
        let mut src = kafka()
            .build_message_source(&BuildContext::default(), &sub)
            .await
            .unwrap();
        let mut got = std::collections::BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut quiet_since = None::<Instant>;
        loop {
            let msgs = src.poll(5000, Duration::from_millis(300)).await.unwrap();
            if msgs.is_empty() {
                if want.iter().all(|s| got.contains_key(s)) {
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_secs(2) {
                        return got;
                    }
                }
            } else {
                quiet_since = None;
            }
            for m in msgs {
                let text = String::from_utf8(m.payload.to_vec()).unwrap();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                let seq = v["Seq"].as_u64().unwrap() as usize;
                if let Some(old) = got.insert(seq, text.clone()) {
                    assert_eq!(old, text, "a duplicate of seq {seq} differs in {topic}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: {} of {} events after 120 s",
                got.len(),
                want.len()
            );
        }
    })
}

/// SPEC §11 at scale: many events with mixed consent — in `strmMeta.consentLevels` or none —
/// and invalid ones, posted concurrently as JSON Lines batches and single events. Every answer
/// names exactly the rejected events; the encrypted topic holds exactly the accepted events,
/// decrypting with stock Tink to what was posted; each derived topic holds exactly the events
/// whose own consent matches, checked row for row by the independent oracle of SPEC §3.
/// KEYLINK_TEST_GATEWAY_EVENTS sets the number of events (default 100,000).
#[test]
fn gateway_at_scale_with_consent_in_events() {
    let n: usize = std::env::var("KEYLINK_TEST_GATEWAY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let started = Instant::now();
    let rt = rt();
    let (enc, an, rec) = (unique("sc-enc"), unique("sc-an"), unique("sc-rec"));
    for t in [&enc, &an, &rec] {
        rt.block_on(kafka().create_topic(t, 3)).unwrap();
    }
    let dir = JobDir::new();
    dir.write("contracts/clicks.json", contract(""));
    dir.write(
        "keylink.yaml",
        format!(
            "connectors:\n  bus: {{ type: kafka, bootstrap_servers: \"{}\" }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
            broker()
        ),
    );
    let purposes = [
        r#""consent_levels": [1]"#,
        r#""consent_levels": [2], "consent_level_type": "CUMULATIVE",
        "masked_fields": { "hash_type": "HMAC_SHA256", "seed": "scale-seed",
          "field_patterns": { "test/clicks/1.0.0": { "field_patterns": ["User*"] } } }"#,
    ];
    let with_targets = format!(
        r#"[{{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{an}" }}, {} }},
            {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{rec}" }}, {} }}]"#,
        purposes[0], purposes[1]
    );
    let derived = format!("{{ {} }}, {{ {} }}", purposes[0], purposes[1]);
    // no consent_level_extractor: an event's own strmMeta.consentLevels is its consent
    dir.write(
        "stream.json",
        format!(
            r#"{{
  "source": {{ "http": {{ "listen": "127.0.0.1:0", "ack_timeout": "60s" }} }},
  "data_contract_ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
  "consent": {{ "default_consent_levels": [0] }},
  "encryption": {{ "timestamp_config": {{ "field": "Time", "format": "iso8601" }},
                  "batch_job_group_id": "clicks-scale" }},
  "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{enc}" }} }},
  "derived_data": {with_targets}
}}"#
        ),
    );
    // what the oracle reads: the same derived datasets, consent from the field EvConsent that
    // stands for each event's own strmMeta.consentLevels
    dir.write(
        "oracle-job.json",
        format!(
            r#"{{ "consent": {{ "default_consent_levels": [0],
                 "consent_level_extractor": {{ "field": "EvConsent" }} }},
               "derived_data": [{derived}] }}"#
        ),
    );
    let mut gw = Gateway::start(dir.path());
    let events: Vec<Posted> = (0..n).map(scale_event).collect();

    // 4 clients; each posts its share as JSON Lines batches of up to 500, and as its 1st, 11th,
    // 21st… request a run of 20 single events
    let clients = 4;
    let answers: Vec<(usize, usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (events, addr) = (&events, gw.addr.clone());
                s.spawn(move || {
                    let mine: Vec<&Posted> = events.iter().skip(c).step_by(clients).collect();
                    let (mut requests, mut singles, mut i) = (0, 0, 0);
                    while i < mine.len() {
                        requests += 1;
                        let single = requests % 10 == 1;
                        let chunk = &mine[i..(i + if single { 20 } else { 500 }).min(mine.len())];
                        i += chunk.len();
                        let bodies: Vec<(Vec<&Posted>, String, &str)> = if single {
                            singles += chunk.len();
                            chunk
                                .iter()
                                .map(|e| (vec![*e], e.text.clone(), "application/json"))
                                .collect()
                        } else {
                            let body: String =
                                chunk.iter().map(|e| format!("{}\n", e.text)).collect();
                            vec![(chunk.to_vec(), body, "application/x-ndjson")]
                        };
                        for (evs, body, ct) in bodies {
                            let (code, answer) =
                                http(&addr, "POST", "/events", ct, body.as_bytes());
                            assert_eq!(code, 200, "{answer}");
                            assert!(!answer.contains("example.com"), "a value: {answer}");
                            let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                            let want: Vec<(usize, &str)> = evs
                                .iter()
                                .enumerate()
                                .filter(|(_, e)| e.levels.is_none())
                                .map(|(k, e)| (k, e.reason))
                                .collect();
                            let got: Vec<(usize, &str)> = v["rejected"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|r| {
                                    (
                                        r["index"].as_u64().unwrap() as usize,
                                        r["reason"].as_str().unwrap(),
                                    )
                                })
                                .collect();
                            assert_eq!(got, want, "rejects of a request");
                            assert_eq!(
                                v["accepted"].as_u64().unwrap() as usize,
                                evs.len() - want.len()
                            );
                        }
                    }
                    (requests, singles, mine.len())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let posted_in = started.elapsed();
    assert_eq!(answers.iter().map(|a| a.2).sum::<usize>(), n);
    assert!(answers.iter().all(|a| a.1 > 0), "single events were posted");

    let accepted: std::collections::BTreeSet<usize> = events
        .iter()
        .filter(|e| e.levels.is_some())
        .map(|e| e.seq)
        .collect();
    let enc_msgs = read_by_seq(&rt, &enc, &accepted);
    assert_eq!(
        enc_msgs
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        accepted,
        "the encrypted topic holds exactly the accepted events"
    );
    let wants = |f: &dyn Fn(&[i32]) -> bool| -> std::collections::BTreeSet<usize> {
        events
            .iter()
            .filter(|e| e.levels.as_deref().is_some_and(f))
            .map(|e| e.seq)
            .collect()
    };
    let an_want = wants(&|l| l.contains(&1));
    let rec_want = wants(&|l| l.iter().max().is_some_and(|m| *m >= 2));
    let an_msgs = read_by_seq(&rt, &an, &an_want);
    let rec_msgs = read_by_seq(&rt, &rec, &rec_want);
    assert_eq!(
        an_msgs
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        an_want
    );
    assert_eq!(
        rec_msgs
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        rec_want
    );
    let (code, log) = gw.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("example.com"), "{log}");

    // each message's strmMeta is keylink's own, with the event's consent
    for msgs in [&enc_msgs, &an_msgs, &rec_msgs] {
        for (seq, text) in msgs.iter() {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let meta = v["strmMeta"].as_object().unwrap();
            assert!(meta.contains_key("keyLink") && !meta.contains_key("forged"));
            let levels: Vec<i32> = serde_json::from_value(meta["consentLevels"].clone()).unwrap();
            assert_eq!(Some(levels), events[*seq].levels, "seq {seq}");
        }
    }
    let r = dir.run(&[
        "keys",
        "export",
        "--group",
        "clicks-scale",
        "--output",
        "out/keys.csv",
    ]);
    assert_eq!(r.code, 0, "{}", r.all_output());

    // stock Tink: the encrypted topic, in seq order, against the posted events (no strmMeta)
    let enc_file: String = enc_msgs.values().map(|t| format!("{t}\n")).collect();
    dir.write("out/encrypted.jsonl", enc_file);
    let orig: String = accepted
        .iter()
        .map(|s| format!("{}\n", events[*s].plain))
        .collect();
    dir.write("out/original.jsonl", orig);
    let p = |rel: &str| dir.path().join(rel);
    let out = tink_check(
        &p("out/keys.csv"),
        &p("out/encrypted.jsonl"),
        &p("out/original.jsonl"),
        "Email,UserName",
        "jsonl",
    );
    assert!(
        out.contains(&format!("{} rows", accepted.len())) && out.contains(" 0 mismatches"),
        "{out}"
    );

    // the oracle: the accepted events as CSV (EvConsent = the event's own consent), and each
    // derived topic as the CSV the oracle reads
    const COLS: [&str; 7] = [
        "Seq",
        "SessionId",
        "UserId",
        "Email",
        "UserName",
        "Time",
        "EvConsent",
    ];
    let mut w = csv::Writer::from_path(p("out/in.csv")).unwrap();
    w.write_record(COLS).unwrap();
    for s in &accepted {
        let v: serde_json::Value = serde_json::from_str(&events[*s].plain).unwrap();
        let mut row: Vec<String> = COLS[..6].iter().map(|c| cell(&v[*c])).collect();
        row.push(events[*s].own.clone());
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    for (i, msgs) in [&an_msgs, &rec_msgs].iter().enumerate() {
        let file = format!("out/derived{i}.csv");
        let mut w = csv::Writer::from_path(p(&file)).unwrap();
        let mut header: Vec<&str> = COLS.to_vec();
        header.extend([
            "strmMeta.eventContractRef",
            "strmMeta.timestamp",
            "strmMeta.keyLink",
            "strmMeta.consentLevels",
        ]);
        w.write_record(&header).unwrap();
        for (seq, text) in msgs.iter() {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let mut row: Vec<String> = COLS[..6].iter().map(|c| cell(&v[*c])).collect();
            row.push(events[*seq].own.clone());
            let m = &v["strmMeta"];
            row.extend([
                cell(&m["eventContractRef"]),
                cell(&m["timestamp"]),
                cell(&m["keyLink"]),
                m["consentLevels"].to_string(),
            ]);
            w.write_record(&row).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        let out = oracle_check(
            &dir,
            "oracle-job.json",
            "contracts/clicks.json",
            "out/in.csv",
            &file,
            i,
        );
        assert!(out.contains("0 mismatches"), "{out}");
    }
    let total = started.elapsed();
    std::io::stderr()
        .write_all(
            format!(
                "gateway_at_scale: {n} events ({} accepted) posted in {:.1} s by {clients} \
                 clients ({} requests); checked in {:.1} s\n",
                accepted.len(),
                posted_in.as_secs_f64(),
                answers.iter().map(|a| a.0).sum::<usize>(),
                total.as_secs_f64()
            )
            .as_bytes(),
        )
        .unwrap();
}

/// A JSON value as a CSV cell: strings as they are, other JSON as its text.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A tansu broker of this test's own (its own port), storing into a bucket of the S3 emulator so
/// that a restarted broker has the messages of the one before. Dropping it kills that process.
struct OwnBroker {
    child: Option<Child>,
    port: u16,
    bucket: String,
    s3: String,
    log: std::path::PathBuf,
}

impl OwnBroker {
    fn new(dir: &Path) -> Self {
        let s3 = std::env::var("KEYLINK_TEST_S3_ENDPOINT").expect(
            "KEYLINK_TEST_S3_ENDPOINT is not set: the broker-outage test keeps the broker's \
             storage in the S3 emulator; run `cargo xtask test`",
        );
        let bucket = unique("tansu").to_lowercase();
        let host = s3
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let (code, body) = http(&host, "PUT", &format!("/{bucket}"), "text/plain", b"");
        assert_eq!(code, 200, "creating bucket {bucket}: {body}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = OwnBroker {
            child: None,
            port,
            bucket,
            s3,
            log: dir.join("tansu.log"),
        };
        b.start();
        b
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let tansu = std::env::var_os("KEYLINK_TEST_TANSU").expect(
            "KEYLINK_TEST_TANSU is not set: the broker-outage test starts a tansu broker of its \
             own; run `cargo xtask test` (or export the path `cargo xtask kafka start` uses)",
        );
        let url = format!("tcp://{}", self.addr());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .arg("--storage-engine")
            .arg(format!("s3://{}/", self.bucket))
            .env("AWS_ENDPOINT", &self.s3)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr()).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen within 30 s:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SPEC §11: the broker is killed while a client posts; requests get 503 (nothing accepted, no
/// values in the body) and /healthz says unavailable; once the broker is back (same storage),
/// requests succeed again, and every event that was answered 200 is on the topic.
#[test]
fn gateway_survives_a_broker_outage_under_load() {
    let rt = rt();
    let dir = JobDir::new();
    let mut b = OwnBroker::new(dir.path());
    let baddr = b.addr();
    let own = || {
        KafkaConfig::new(baddr.clone())
            .with_property("session.timeout.ms", "6000")
            .with_property("heartbeat.interval.ms", "1000")
            .with_property("max.poll.interval.ms", "7000")
    };
    let enc = unique("out-enc");
    rt.block_on(own().create_topic(&enc, 1)).unwrap();
    dir.write("contracts/clicks.json", contract(""));
    dir.write(
        "keylink.yaml",
        format!(
            "connectors:\n  bus: {{ type: kafka, bootstrap_servers: \"{}\" }}\n\
             contracts: ./contracts\nkey_store: {{ type: embedded, path: ./keys.db }}\n",
            b.addr()
        ),
    );
    dir.write(
        "stream.json",
        format!(
            r#"{{
  "source": {{ "http": {{ "listen": "127.0.0.1:0", "ack_timeout": "2s" }} }},
  "data_contract_ref": {{ "handle": "test", "name": "clicks", "version": "1.0.0" }},
  "consent": {{ "default_consent_levels": [0], "consent_level_extractor": {{ "field": "Consent" }} }},
  "encryption": {{ "timestamp_config": {{ "field": "Time", "format": "iso8601" }},
                  "batch_job_group_id": "clicks-outage" }},
  "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "{enc}" }} }}
}}"#
        ),
    );
    let mut gw = Gateway::start(dir.path());
    let addr = gw.addr.clone();

    // the client: batches of 10 events, one after the other, until told to stop; it records
    // the seqs answered 200 and every status
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u16, usize, Instant)>::new()));
    let client = {
        let (stop, log, addr) = (stop.clone(), log.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body: String = (seq..seq + 10).map(|s| format!("{}\n", event(s))).collect();
                let (code, answer) = http(
                    &addr,
                    "POST",
                    "/events",
                    "application/x-ndjson",
                    body.as_bytes(),
                );
                assert!(!answer.contains("example.com"), "a value: {answer}");
                match code {
                    200 => {
                        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                        assert_eq!(v["accepted"], 10, "{answer}");
                        acked.extend(seq..seq + 10);
                    }
                    503 => assert!(
                        answer.contains("nothing was accepted") && !answer.contains("accepted\":"),
                        "{answer}"
                    ),
                    other => panic!("unexpected {other}: {answer}"),
                }
                log.lock().unwrap().push((code, seq, Instant::now()));
                seq += 10;
                std::thread::sleep(Duration::from_millis(20));
            }
            acked
        })
    };
    let count = |code: u16| log.lock().unwrap().iter().filter(|l| l.0 == code).count();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !f() {
            assert!(Instant::now() < deadline, "waited 90 s for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("20 answers 200", &|| count(200) >= 20);
    b.kill();
    let killed = Instant::now();
    wait("3 answers 503 after the broker died", &|| count(503) >= 3);
    let (code, body) = http(&addr, "GET", "/healthz", "text/plain", b"");
    assert_eq!(code, 503, "{body}");
    let before_restart = count(200);
    b.start();
    let restarted = Instant::now();
    wait("20 more answers 200 after the restart", &|| {
        count(200) >= before_restart + 20
    });
    let recovered = log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.0 == 200 && l.2 > restarted)
        .map(|l| l.2 - restarted)
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = client.join().unwrap();
    let (code, body) = http(&addr, "GET", "/healthz", "text/plain", b"");
    assert_eq!(code, 200, "{body}");

    // nothing answered 200 is missing from the topic of the restarted broker
    let want: std::collections::BTreeSet<usize> = acked.iter().copied().collect();
    let got = rt.block_on(async {
        let sub = Subscription {
            topic: enc.clone(),
            group_id: unique("reader"),
        };
        let mut src = own()
            .build_message_source(&BuildContext::default(), &sub)
            .await
            .unwrap();
        let mut got = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !want.is_subset(&got) && Instant::now() < deadline {
            for m in src.poll(1000, Duration::from_millis(300)).await.unwrap() {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                got.insert(v["Seq"].as_u64().unwrap() as usize);
            }
        }
        got
    });
    let lost: Vec<&usize> = want.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} of {} events answered 200 are not on the topic (first seqs {:?})",
        lost.len(),
        want.len(),
        &lost[..lost.len().min(10)]
    );
    let (code, log_text) = gw.terminate();
    assert_eq!(code, 0, "{log_text}");
    assert!(!log_text.contains("example.com"), "{log_text}");
    std::io::stderr()
        .write_all(
            format!(
                "broker outage: {} events acknowledged, {} requests answered 503; first 503 \
                 {:.1} s after the kill; first 200 {:.1} s after the restart\n",
                want.len(),
                count(503),
                log.lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.0 == 503)
                    .map_or(0.0, |l| (l.2 - killed).as_secs_f64()),
                recovered.as_secs_f64()
            )
            .as_bytes(),
        )
        .unwrap();
}
