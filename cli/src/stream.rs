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
    let stop = async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
    };
    match &prepared.source {
        PreparedSource::Topic {
            connector,
            subscription,
        } => {
            let mut source = prepared.open_source(&config).await?;
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
    Ok(0)
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
