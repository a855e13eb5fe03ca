//! End-to-end: `keylink run --watch` (issue #16, SPEC §12) on local files. The S3 variant is in
//! s3_job.rs. All data is synthetic.

mod common;

use common::*;

const HEADER: &str = "SessionId,UserId,Email,UserName,Time,Consent,Page\n";

/// `n` rows for object `tag`; sessions cross objects (`s<i/5>` in every object) so keys are
/// shared between them.
fn rows(tag: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "s{},cust{},mail-{tag}-{i}@example.com,Person {tag} {i},2024-03-0{} 1{}:00:00,{},/p/{i}\n",
                i / 5,
                i % 7,
                1 + i % 3,
                i % 10,
                ["1", "2", "\"[1,2]\"", "0"][i % 4],
            )
        })
        .collect()
}

/// A watch job: every target named after its input, a fixed key group, outputs under `out`.
fn watch_job(out: &str) -> String {
    job("*.csv", "csv", r#", "batch_job_group_id": "watch-group""#)
        .replace(
            r#""path_prefix": "out", "file_name": "encrypted.csv""#,
            &format!(r#""path_prefix": "{out}", "file_name": "{{input}}-encrypted.csv""#),
        )
        .replace(
            r#""path_prefix": "out", "file_name": "keys.csv""#,
            &format!(r#""path_prefix": "{out}", "file_name": "{{input}}-keys.csv""#),
        )
        .replacen(
            "\"encryption_keys_data\"",
            &format!(
                r#""derived_data": [ {{ "target": {{ "data_connector_ref": {{ "name": "files" }},
                     "path_prefix": "{out}", "file_name": "{{input}}-analytics.csv" }},
                     "consent_levels": [1] }} ],
                   "encryption_keys_data""#
            ),
            1,
        )
}

fn done(s: &std::collections::BTreeMap<String, serde_json::Value>, path: &str) -> bool {
    s.get(path).is_some_and(|e| e["status"] == "done")
}

#[test]
fn issue_16_objects_are_processed_as_they_land_exactly_once() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("job.json", watch_job("out"));
    d.write("data/a.csv", format!("{HEADER}{}", rows("a", 40)));
    let w = Watcher::start(d.path(), "job.json", &[]);
    wait_for(&w, "job.json", "a.csv", |s| done(s, "data/a.csv"));
    d.write("data/b.csv", format!("{HEADER}{}", rows("b", 30)));
    wait_for(&w, "job.json", "b.csv", |s| done(s, "data/b.csv"));

    // rewritten in place: processed again; a malformed object (no Email column) fails and
    // does not block the one after it
    let before = watch_state(d.path(), "job.json")["data/a.csv"]["at"].clone();
    d.write("data/a.csv", format!("{HEADER}{}", rows("a2", 50)));
    d.write(
        "data/bad.csv",
        format!("{}{}", HEADER.replace("Email", "Mail"), rows("bad", 5)),
    );
    d.write("data/c.csv", format!("{HEADER}{}", rows("c", 20)));
    wait_for(&w, "job.json", "a.csv again, bad.csv failed, c.csv", |s| {
        s.get("data/a.csv")
            .is_some_and(|e| e["at"] != before && e["rows_read"] == 50)
            && s.get("data/bad.csv")
                .is_some_and(|e| e["status"] == "failed")
            && done(s, "data/c.csv")
    });
    let log = w.log();
    assert_eq!(w.terminate(), 0, "{log}");

    // exactly the outputs of the good objects, once each
    let mut expected: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|o| ["encrypted", "keys", "analytics"].map(|k| format!("{o}-{k}.csv")))
        .collect();
    expected.sort();
    assert_eq!(files_under(&d.path().join("out")), expected);
    // each object's encrypted output decrypts with its own keys export (a's: the rewrite)
    for o in ["a", "b", "c"] {
        let out = tink_check(
            &d.path().join(format!("out/{o}-keys.csv")),
            &d.path().join(format!("out/{o}-encrypted.csv")),
            &d.path().join(format!("data/{o}.csv")),
            "Email,UserName",
            "csv",
        );
        assert!(out.contains("0 mismatches"), "{o}: {out}");
    }
    assert!(d.read("out/a-encrypted.csv").lines().count() == 51);
    let state = watch_state(d.path(), "job.json");
    let bad = &state["data/bad.csv"];
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .contains("no column 'Email'"),
        "{bad}"
    );
    // the human table names the failure, and no personal data
    let status = d.run(&["watch-status", "job.json"]);
    assert_eq!(status.code, 0, "{}", status.all_output());
    assert!(status.stdout.contains("failed") && status.stdout.contains("data/bad.csv"));
    assert!(!status.stdout.contains("@example.com") && !log.contains("@example.com"));
}

#[test]
fn issue_16_a_watch_job_needs_input_names_and_a_key_group() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("data/a.csv", format!("{HEADER}{}", rows("a", 5)));
    d.write(
        "job.json",
        job("*.csv", "csv", r#", "batch_job_group_id": "g""#),
    );
    let r = d.run(&["run", "job.json", "--watch", "--interval", "1"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("{input}"), "{}", r.stderr);
    d.write(
        "job.json",
        watch_job("out").replace(r#", "batch_job_group_id": "watch-group""#, ""),
    );
    let r = d.run(&["run", "job.json", "--watch", "--interval", "1"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("batch_job_group_id"), "{}", r.stderr);
    // one target with {input} and one without: refused in plain runs too
    d.write(
        "job.json",
        watch_job("out").replace("{input}-keys.csv", "keys.csv"),
    );
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("no {input}"), "{}", r.stderr);
    assert!(!d.exists("out"));
}

/// kill -9 at pseudo-random moments, ten times, then a run to the end: the outputs equal, byte
/// for byte, those of one uninterrupted run (same key group and store), and no temporary file
/// is left.
#[test]
fn issue_16_kill_9_and_restart_neither_skips_nor_duplicates() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("job.json", watch_job("out"));
    let objects = ["o1", "o2", "o3", "o4", "o5", "o6"];
    for (i, o) in objects.iter().enumerate() {
        d.write(
            &format!("data/{o}.csv"),
            format!("{HEADER}{}", rows(o, 3000 + 500 * i)),
        );
    }
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let w = Watcher::start(d.path(), "job.json", &[]);
        std::thread::sleep(std::time::Duration::from_millis(50 + seed % 1500));
        w.kill9();
    }
    let w = Watcher::start(d.path(), "job.json", &[]);
    wait_for(&w, "job.json", "every object", |s| {
        objects.iter().all(|o| done(s, &format!("data/{o}.csv")))
    });
    let log = w.log();
    assert_eq!(w.terminate(), 0, "{log}");

    // the reference: one plain run of the same job into ref/ (same group, same key store)
    d.write("ref.json", watch_job("ref"));
    let r = d.run(&["run", "ref.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let out = files_under(&d.path().join("out"));
    assert_eq!(
        out,
        files_under(&d.path().join("ref")),
        "temporary or missing files"
    );
    assert_eq!(out.len(), 3 * objects.len());
    for f in &out {
        assert!(
            std::fs::read(d.path().join("out").join(f)).unwrap()
                == std::fs::read(d.path().join("ref").join(f)).unwrap(),
            "{f} differs from the uninterrupted run"
        );
    }
    let out = tink_check(
        &d.path().join("out/o6-keys.csv"),
        &d.path().join("out/o6-encrypted.csv"),
        &d.path().join("data/o6.csv"),
        "Email,UserName",
        "csv",
    );
    assert!(out.contains("0 mismatches"), "{out}");
}
