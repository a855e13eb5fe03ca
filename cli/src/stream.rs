//! `keylink stream STREAM.json [--config keylink.yaml]`: runs a stream job (SPEC §11) until
//! SIGINT/SIGTERM, then finishes the batch in hand (delivered and committed) and exits 0.
//!
//! The work is in `keylink_core::stream_job` (the job, the per-event transform shared with batch
//! jobs, the poll → deliver → commit loop); this module loads the files, handles signals and
//! reports.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use keylink_core::stream_job::{self, PreparedSource, StreamJob};

use crate::Common;

/// Runs a stream job until a shutdown signal; returns the exit code.
pub(crate) async fn run(job_file: &Path, common: &Common, max_batch: usize) -> Result<u8> {
    // before anything else: a stop during start-up still ends the stream cleanly
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    crate::on_shutdown_signal(stop_tx)?;
    let config = crate::load_config(job_file, common)?;
    let job = StreamJob::from_file(job_file)?;
    let prepared =
        Arc::new(stream_job::prepare(job, job_file, &config, common.contract.as_deref()).await?);
    // the exporters stop after the source (their final export has the stream's last
    // messages); a failed exporter stops the stream
    let (exp_stop_tx, exp_stop_rx) = tokio::sync::watch::channel(false);
    let (halt_tx, mut halt_rx) = tokio::sync::watch::channel(false);
    let exporter_sources = prepared.open_exporter_sources(&config).await?;
    for e in &prepared.exporters {
        status(&format!(
            "keylink stream: {} exports topic {} as group {}",
            e.name, e.subscription.topic, e.subscription.group_id
        ));
    }
    let stop = async move {
        tokio::select! {
            _ = stop_rx.wait_for(|stopped| *stopped) => {}
            _ = halt_rx.wait_for(|halted| *halted) => {}
        }
    };
    let halt = move || {
        let _ = halt_tx.send(true);
    };
    let exporting = prepared.run_exporters(exporter_sources, exp_stop_rx, &halt);
    let serving = async {
        let r = serve(&prepared, &config, job_file, stop, max_batch).await;
        let _ = exp_stop_tx.send(true);
        r
    };
    let (served, exported) = tokio::join!(serving, exporting);
    let exported = exported?;
    served?;
    let stats = &prepared.stats;
    let rejected = stats.rejected.lock().map(|r| r.clone()).unwrap_or_default();
    let reasons: Vec<String> = rejected.iter().map(|(r, n)| format!("{r}: {n}")).collect();
    status(&format!(
        "keylink stream: stopped; {} events accepted, {} rejected{}",
        stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
        stats.rejected_total(),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        }
    ));
    let n_batch = prepared.exporters.len();
    for (i, s) in exported.iter().enumerate() {
        let what = if i < n_batch {
            format!("{}: {} messages", prepared.exporters[i].name, s.items)
        } else {
            format!("encryption_keys_data: {} keys", s.items)
        };
        status(&format!(
            "keylink stream: {what} exported in {} objects",
            s.objects
        ));
    }
    Ok(0)
}

/// Runs the source (the Kafka loop or the HTTP gateway) until `stop`.
#[cfg_attr(feature = "http", allow(unused_variables))]
async fn serve(
    prepared: &Arc<stream_job::PreparedStream>,
    config: &keylink_core::job::Config,
    job_file: &Path,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    max_batch: usize,
) -> Result<()> {
    match &prepared.source {
        PreparedSource::Topic {
            connector,
            subscription,
        } => {
            let mut source = prepared.open_source(config).await?;
            status(&format!(
                "keylink stream: reading topic {} of connector '{connector}' as group {}",
                subscription.topic, subscription.group_id
            ));
            prepared
                .run_source(source.as_mut(), stop, max_batch.max(1))
                .await?;
        }
        #[cfg(feature = "http")]
        PreparedSource::Http {
            listen,
            max_body_bytes,
            ack_timeout,
        } => {
            crate::gateway::serve(
                prepared.clone(),
                listen,
                *max_body_bytes,
                *ack_timeout,
                stop,
                |addr| status(&format!("keylink stream: listening on http://{addr}")),
            )
            .await?;
        }
        #[cfg(not(feature = "http"))]
        PreparedSource::Http { .. } => {
            anyhow::bail!(
                "{}: source.http: the HTTP ingest gateway is not in this build (feature `http`)",
                job_file.display()
            );
        }
    }
    Ok(())
}

/// A status line on stderr (stdout stays free for machine-readable output).
fn status(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keylink_core::job::Config;
    use keylink_core::stream::{MessageSink, MessageSource, OutMessage, Subscription};
    use keylink_core::stream_job::{self, StreamJob};
    use keylink_core::testkit::memory::MemoryStore;
    use keylink_core::testkit::stream::MemoryBus;

    const CONTRACT: &str = r#"{ "ref": { "handle": "t", "name": "c", "version": "1" },
        "keyField": "SessionId", "piiFields": { "Email": 1 } }"#;

    fn job(skew: &str) -> StreamJob {
        serde_json::from_str(&format!(
            r#"{{ "source": {{ "kafka": {{ "data_connector_ref": {{ "name": "bus" }},
                   "topic": "in", "group_id": "g" }} }},
              "data_contract_ref": {{ "handle": "t", "name": "c", "version": "1" }},
              "encryption": {{ "timestamp_config": {{ "field": "T", "format": "iso8601" }},
                              "batch_job_group_id": "grp" }},
              "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "enc" }} }},
              "rejected_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "rej" }} }}
              {skew} }}"#
        ))
        .unwrap()
    }

    fn config(dir: &std::path::Path, bus: &str) -> Config {
        std::fs::write(dir.join("c.json"), CONTRACT).unwrap();
        std::fs::write(
            dir.join("keylink.yaml"),
            format!(
                "connectors:\n  bus: {{ type: memory_bus, bus: {bus} }}\n\
                 key_store: {{ type: embedded, path: ./keys.db }}\n"
            ),
        )
        .unwrap();
        Config::from_file(&dir.join("keylink.yaml")).unwrap()
    }

    fn events(n: usize) -> Vec<OutMessage> {
        (0..n)
            .map(|i| OutMessage {
                key: None,
                payload: format!(
                    r#"{{"SessionId":"s{}","Email":"p{i}@example.com","T":"2024-04-01T10:00:00Z"}}"#,
                    i % 3
                )
                .into(),
            })
            .collect()
    }

    /// While an output is down nothing is committed: the events come again after a restart,
    /// and produce the same messages.
    #[tokio::test(flavor = "multi_thread")]
    async fn nothing_is_committed_while_an_output_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let bus = MemoryBus::register("cli-down");
        let config = config(dir.path(), "cli-down");
        bus.send("in", &events(10)).await.unwrap();
        let contract = dir.path().join("c.json");
        let p = stream_job::prepare(job(""), "s.json".as_ref(), &config, Some(&contract))
            .await
            .unwrap();
        bus.set_down(true);
        let mut src = p.open_source(&config).await.unwrap();
        let r = p.run_source(src.as_mut(), std::future::pending(), 4).await;
        assert!(r.is_err(), "a failed delivery must stop the stream");
        bus.set_down(false);
        let mut src = p.open_source(&config).await.unwrap();
        let stop = tokio::time::sleep(Duration::from_millis(500));
        p.run_source(src.as_mut(), stop, 4).await.unwrap();
        let enc = bus.messages("enc");
        assert_eq!(enc.len(), 10, "every event once after the restart");
        // a third run has nothing left to do
        let mut src = bus.source(&Subscription {
            topic: "in".into(),
            group_id: "g".into(),
        });
        assert!(
            src.poll(10, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty()
        );
        // replaying the same events gives byte-identical messages keyed by their keyLink
        let again = p
            .transform(
                &events(10)
                    .into_iter()
                    .map(|m| m.payload)
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        assert_eq!(again.messages[0], enc);
        for m in &enc {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(
                v["strmMeta"]["keyLink"].as_str().unwrap().as_bytes(),
                &m.key.as_ref().unwrap()[..]
            );
            assert!(!String::from_utf8_lossy(&m.payload).contains("example.com"));
        }
    }

    /// Rejects carry the event's index and a reason, never its values; a future event is one.
    #[tokio::test(flavor = "multi_thread")]
    async fn rejects_name_the_event_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let _bus = MemoryBus::register("cli-rejects");
        let config = config(dir.path(), "cli-rejects");
        let contract = dir.path().join("c.json");
        let p = stream_job::prepare(
            job(r#", "max_future_skew": "10m""#),
            "s.json".as_ref(),
            &config,
            Some(&contract),
        )
        .await
        .unwrap();
        let future = (chrono_like_now_plus_hours(2)).to_string();
        let evs: Vec<keylink_core::Bytes> = vec![
            r#"{"SessionId":"a","Email":"x@example.com","T":"2024-04-01T10:00:00Z"}"#.into(),
            "{\"broken\": ".into(),
            format!(r#"{{"SessionId":"a","Email":"y@example.com","T":"{future}"}}"#).into(),
            r#"{"Email":"z@example.com","T":"2024-04-01T10:00:00Z"}"#.into(),
            "".into(),
        ];
        let t = p.transform(&evs).await.unwrap();
        assert_eq!(t.accepted, 1);
        let got: Vec<(usize, &str)> = t
            .rejects
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "bad_json"),
                (2, "future_timestamp"),
                (3, "missing_key_field"),
                (4, "bad_json")
            ]
        );
        for r in &t.rejects {
            assert!(!r.detail.contains("example.com"), "{}", r.detail);
        }
        // the rejected output gets them raw, in order
        assert_eq!(t.messages[1].len(), 4);
        assert_eq!(t.messages[1][1].payload, evs[2]);
    }

    fn export_job(exporters: &str) -> StreamJob {
        serde_json::from_str(&format!(
            r#"{{ "source": {{ "kafka": {{ "data_connector_ref": {{ "name": "bus" }},
                   "topic": "in", "group_id": "g" }} }},
              "data_contract_ref": {{ "handle": "t", "name": "c", "version": "1" }},
              "encryption": {{ "timestamp_config": {{ "field": "T", "format": "iso8601" }},
                              "batch_job_group_id": "grp" }},
              "encrypted_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "enc" }} }},
              "derived_data": [ {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "der" }},
                                   "consent_levels": [0] }} ],
              "rejected_data": {{ "target": {{ "data_connector_ref": {{ "name": "bus" }}, "topic": "rej" }} }}
              {exporters} }}"#
        ))
        .unwrap()
    }

    fn export_config(dir: &std::path::Path, bus: &str, lake: &str) -> Config {
        std::fs::write(dir.join("c.json"), CONTRACT).unwrap();
        std::fs::write(
            dir.join("keylink.yaml"),
            format!(
                "connectors:\n  bus: {{ type: memory_bus, bus: {bus} }}\n\
                 \x20 lake: {{ type: memory, store: {lake} }}\n\
                 key_store: {{ type: embedded, path: ./keys.db }}\n"
            ),
        )
        .unwrap();
        Config::from_file(&dir.join("keylink.yaml")).unwrap()
    }

    const EXPORTERS: &str = r#", "batch_exporters": [ { "from": "enc", "interval_seconds": 1,
        "target": { "data_connector_ref": { "name": "lake" }, "path_prefix": "export/enc",
                    "data_type": { "jsonl": {} } } } ],
      "encryption_keys_data": { "interval_seconds": 1,
        "target": { "data_connector_ref": { "name": "lake" }, "path_prefix": "export/keys" } }"#;

    /// A source whose commits fail: a crash between the object commit and the offset commit.
    #[derive(Debug)]
    struct NoCommit(Box<dyn MessageSource>);
    #[keylink_core::async_trait]
    impl MessageSource for NoCommit {
        async fn poll(
            &mut self,
            max: usize,
            wait: Duration,
        ) -> keylink_core::Result<Vec<keylink_core::stream::InMessage>> {
            self.0.poll(max, wait).await
        }
        async fn commit(
            &mut self,
            _: &[keylink_core::stream::Position],
        ) -> keylink_core::Result<()> {
            Err(keylink_core::Error::new(
                keylink_core::ErrorKind::Transient,
                "crashed before the offset commit",
            ))
        }
    }

    /// The exported objects of `prefix`: name → lines.
    fn exported(lake: &MemoryStore, prefix: &str) -> Vec<(String, Vec<String>)> {
        lake.objects()
            .into_iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(p, b)| {
                let text = String::from_utf8(b.to_vec()).unwrap();
                (p, text.lines().map(str::to_string).collect())
            })
            .collect()
    }

    /// The batch exporter on the memory bus: a failed object write and a crash between the
    /// object commit and the offset commit neither lose nor duplicate a message in the exported
    /// files; the names give the ranges; the keys exports cover every keyLink.
    #[tokio::test(flavor = "multi_thread")]
    async fn exports_are_exactly_once_across_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let bus = MemoryBus::register("cli-export");
        let lake = MemoryStore::register("cli-export-lake");
        let config = export_config(dir.path(), "cli-export", "cli-export-lake");
        let contract = dir.path().join("c.json");
        let mut p = stream_job::prepare(
            export_job(EXPORTERS),
            "s.json".as_ref(),
            &config,
            Some(&contract),
        )
        .await
        .unwrap();
        p.keys_exporter
            .as_mut()
            .unwrap()
            .set_lag(Duration::from_millis(10));
        assert_eq!(p.exporters.len(), 1);
        bus.send("in", &events(30)).await.unwrap();
        let mut src = p.open_source(&config).await.unwrap();
        p.run_source(
            src.as_mut(),
            tokio::time::sleep(Duration::from_millis(300)),
            7,
        )
        .await
        .unwrap();
        let enc = bus.messages("enc");
        assert_eq!(enc.len(), 30);
        let ex = &p.exporters[0];

        // 1: the first object write fails: nothing is visible, nothing committed
        lake.fail_nth_write(1);
        let mut s = p.open_exporter_sources(&config).await.unwrap().remove(0);
        let r = ex.run(s.as_mut(), std::future::pending()).await;
        assert!(r.is_err(), "a failed write must stop the exporter");
        assert!(exported(&lake, "export/enc/").is_empty());
        lake.fail_nth_write(usize::MAX);

        // 2: the object is committed, the offset commit fails (as if killed in between): the
        // exporter goes on (the offsets are only a hint)
        let s = p.open_exporter_sources(&config).await.unwrap().remove(0);
        let mut s = NoCommit(s);
        let r = ex
            .run(&mut s, tokio::time::sleep(Duration::from_millis(1500)))
            .await
            .unwrap();
        assert_eq!(r.items, 30);
        let first = exported(&lake, "export/enc/");
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].0, "export/enc/enc-0-0-29.jsonl");

        // 3: more messages; a restart reads 0..29 again (offsets not committed) but skips them
        bus.send("in", &events(40)[30..]).await.unwrap();
        let mut src = p.open_source(&config).await.unwrap();
        p.run_source(
            src.as_mut(),
            tokio::time::sleep(Duration::from_millis(300)),
            7,
        )
        .await
        .unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let sources = p.open_exporter_sources(&config).await.unwrap();
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = tx.send(true);
        };
        let (stats, ()) = tokio::join!(p.run_exporters(sources, rx, &|| {}), stopper);
        let stats = stats.unwrap();
        assert_eq!(stats[0].items, 10, "{stats:?}");
        let all = exported(&lake, "export/enc/");
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "export/enc/enc-0-0-29.jsonl",
                "export/enc/enc-0-30-39.jsonl"
            ]
        );
        let lines: Vec<String> = all.into_iter().flat_map(|(_, l)| l).collect();
        let sent: Vec<String> = bus
            .messages("enc")
            .iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect();
        assert_eq!(lines, sent, "every message once, byte-identical, in order");
        for l in &lines {
            assert!(!l.contains("example.com"), "{l}");
        }

        // the keys exports cover every keyLink; ranges follow each other
        let keys = exported(&lake, "export/keys/");
        assert!(!keys.is_empty());
        let mut links = std::collections::BTreeSet::new();
        for (name, rows) in &keys {
            assert!(name.starts_with("export/keys/keys-"), "{name}");
            assert_eq!(rows[0], "keyLink,encryptionKey,policyId,expiresAt");
            for r in &rows[1..] {
                links.insert(r.split(',').next().unwrap().to_string());
            }
        }
        assert!(keys[0].0.starts_with("export/keys/keys-0-"), "{keys:?}");
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let link = v["strmMeta"]["keyLink"].as_str().unwrap();
            assert!(links.contains(link), "keyLink {link} is in no keys export");
        }
        // a restart finds where the keys exports ended and adds nothing
        let until = p
            .keys_exporter
            .as_ref()
            .unwrap()
            .exported_until()
            .await
            .unwrap();
        assert!(until > 0);
    }

    /// Exporter settings are refused before any event is read.
    #[tokio::test(flavor = "multi_thread")]
    async fn exporter_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _bus = MemoryBus::register("cli-export-bad");
        let _lake = MemoryStore::register("cli-export-bad-lake");
        let config = export_config(dir.path(), "cli-export-bad", "cli-export-bad-lake");
        let contract = dir.path().join("c.json");
        let cases: [(&str, &str, &str); 10] = [
            (
                "\"interval_seconds\": 1",
                "\"interval_seconds\": 0",
                "batch_exporters[0].interval_seconds: must be at least 1",
            ),
            (
                "\"interval_seconds\": 1,",
                "",
                "batch_exporters[0].interval_seconds: missing",
            ),
            (
                "\"from\": \"enc\"",
                "\"from\": \"nope\"",
                "batch_exporters[0].from: \"nope\" is not a topic this job writes",
            ),
            (
                "\"from\": \"enc\"",
                "\"from\": \"rej\"",
                "batch_exporters[0].from: \"rej\"",
            ),
            (
                "\"from\": \"enc\"",
                "\"from\": \"in\"",
                "batch_exporters[0].from: \"in\"",
            ),
            (
                "{ \"jsonl\": {} }",
                "{ \"csv\": {} }",
                "csv exports are not supported",
            ),
            (
                "\"name\": \"lake\" }, \"path_prefix\": \"export/enc\"",
                "\"name\": \"lakee\" }, \"path_prefix\": \"export/enc\"",
                "connector 'lakee' is not defined",
            ),
            (
                "\"name\": \"lake\" }, \"path_prefix\": \"export/enc\"",
                "\"name\": \"bus\" }, \"path_prefix\": \"export/enc\"",
                "has topics, not objects",
            ),
            (
                "\"path_prefix\": \"export/keys\"",
                "\"path_prefix\": \"export/enc/keys\"",
                "overlaps batch_exporters[0].target",
            ),
            (
                "\"path_prefix\": \"export/keys\"",
                "\"path_prefix\": \"\"",
                "encryption_keys_data.target.path_prefix: missing",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(EXPORTERS.contains(from), "{from}");
            let job = export_job(&EXPORTERS.replacen(from, to, 1));
            let e = stream_job::prepare(job, "s.json".as_ref(), &config, Some(&contract))
                .await
                .expect_err(expected);
            assert!(e.to_string().contains(expected), "{expected}: {e}");
        }
        // an export where the job reads: the source topic of the bus
        let job = export_job(&EXPORTERS.replace(
            "\"name\": \"lake\" }, \"path_prefix\": \"export/keys\"",
            "\"name\": \"bus\" }, \"path_prefix\": \"in\"",
        ));
        let e = stream_job::prepare(job, "s.json".as_ref(), &config, Some(&contract))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("where the job reads"), "{e}");
        // a misspelt field
        let e = serde_json::from_str::<StreamJob>(
            &EXPORTERS.replace("interval_seconds\": 1,", "interval_second\": 1,"),
        );
        assert!(e.is_err());
        let bad = r#"{ "source": { "http": { "listen": "x" } }, "encryption": { "timestamp_config": { "field": "T", "format": "iso8601" } },
            "batch_exporters": [ { "from": "e", "interval_second": 1, "target": { "data_connector_ref": { "name": "l" } } } ] }"#;
        assert!(serde_json::from_str::<StreamJob>(bad).is_err());
    }

    /// An ISO-8601 UTC time `hours` from now (without a date library in this crate).
    fn chrono_like_now_plus_hours(hours: u64) -> String {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + hours * 3600;
        // days since the epoch → civil date (Howard Hinnant's algorithm)
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}
