//! End-to-end: the encryption batch job on local files (issue #2). All data is synthetic.

mod common;

use common::*;

/// Good rows with a distinctive marker in every PII value, so a leak is easy to spot.
fn good_rows(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "sess-{},cust-{},secretmail{}@example.com,\"Secret Name {}, Jr.\",2024-03-{:02} {:02}:15:00,{},page-{}\n",
            i / 4,
            i % 7,
            i,
            i,
            1 + (i % 3),
            i % 24,
            ["1", "\"[1,2]\"", "0"][i % 3],
            i
        ));
    }
    s
}

const HEADER: &str = "SessionId,UserId,Email,UserName,Time,Consent,Page\n";

#[test]
fn csv_output_decrypts_with_stock_tink() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(r#", "UserId": 1"#));
    d.write("data/clicks.csv", format!("{HEADER}{}", good_rows(300)));
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], 300);
    assert_eq!(s["rows_accepted"], 300);
    // 75 sessions over 3 days: a session's rows fall on up to 3 days → one key per (session, day)
    assert!(s["keys_created"].as_u64().unwrap() >= 75, "{s}");

    let enc = d.read("out/encrypted.csv");
    let header = enc.lines().next().unwrap();
    assert_eq!(
        header,
        "SessionId,UserId,Email,UserName,Time,Consent,Page,strmMeta.eventContractRef,\
         strmMeta.timestamp,strmMeta.keyLink,strmMeta.consentLevels"
    );
    assert!(
        !enc.contains("secretmail"),
        "plaintext PII in the encrypted output"
    );
    assert!(
        !enc.contains("Secret Name"),
        "plaintext PII in the encrypted output"
    );
    assert!(enc.contains("test/clicks/1.0.0"));
    // consent levels parsed from the field
    assert!(enc.contains("\"[1,2]\""), "consent levels missing");

    let out = tink_check(
        &d.path().join("out/keys.csv"),
        &d.path().join("out/encrypted.csv"),
        &d.path().join("data/clicks.csv"),
        "Email,UserName,UserId",
        "csv",
    );
    assert!(out.contains("300 rows"), "{out}");
    assert_no_plaintext(&d, &["secretmail", "Secret Name"], &[]);
}

#[test]
fn same_session_and_day_share_a_key_and_ciphertext() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write(
        "data/x.csv",
        format!(
            "{HEADER}s1,u1,a@b,Ann,2024-03-01 10:00:00,1,p\ns1,u1,a@b,Ann,2024-03-01 23:59:59,1,p\n\
             s1,u1,a@b,Ann,2024-03-02 00:00:00,1,p\ns2,u1,a@b,Ann,2024-03-01 10:00:00,1,p\n"
        ),
    );
    d.write("job.json", job("x.csv", "csv", ""));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let enc = d.read("out/encrypted.csv");
    let rows: Vec<Vec<&str>> = enc
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    // Europe/Amsterdam: 2024-03-01 23:59:59 local is 22:59:59Z (same UTC day as 10:00 local);
    // 2024-03-02 00:00:00 local is 2024-03-01 23:00Z — still the same UTC day.
    let (email, link) = (2, 9);
    assert_eq!(rows[0][email], rows[1][email]);
    assert_eq!(rows[0][link], rows[1][link]);
    assert_eq!(rows[0][link], rows[2][link]);
    // another session, same day: another key, another ciphertext
    assert_ne!(rows[0][link], rows[3][link]);
    assert_ne!(rows[0][email], rows[3][email]);
    let keys = d.read("out/keys.csv");
    assert_eq!(keys.lines().count(), 1 + 2, "{keys}");
}

#[test]
fn jsonl_with_nested_pii_decrypts_with_stock_tink() {
    let d = JobDir::new();
    d.write(
        "contracts/c.json",
        r#"{ "ref": { "handle": "test", "name": "clicks", "version": "1.0.0" },
             "keyField": "SessionId",
             "fieldMetadata": [
               { "fieldName": "customer/email", "personalDataConfig": { "isPii": true, "purposeLevel": 1 } },
               { "fieldName": "customer/age", "personalDataConfig": { "isPii": true, "purposeLevel": 2 } },
               { "fieldName": "UserName", "personalDataConfig": { "isPii": true, "purposeLevel": 2 } }
             ] }"#,
    );
    let mut data = String::new();
    for i in 0..100 {
        data.push_str(&format!(
            "{{\"SessionId\":\"s{}\",\"Time\":\"2024-06-0{} 12:00:00\",\"UserName\":\"Zoë \\\"{}\\\" 😀\",\"customer\":{{\"email\":\"secret{}@example.com\",\"age\":{}}},\"Consent\":\"[1]\",\"n\":{}}}\n",
            i / 3, 1 + i % 5, i, i, 20 + i % 50, i
        ));
    }
    d.write("data/clicks.jsonl", &data);
    d.write("job.json", job("*.jsonl", "jsonl", ""));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let enc = d.read("out/encrypted.jsonl");
    assert_eq!(enc.lines().count(), 100);
    assert!(
        !enc.contains("secret"),
        "plaintext PII in the encrypted output"
    );
    for line in enc.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["strmMeta"]["eventContractRef"], "test/clicks/1.0.0");
        assert!(v["strmMeta"]["timestamp"].is_i64());
        assert!(v["customer"]["email"].as_str().unwrap().starts_with('A'));
    }
    let out = tink_check(
        &d.path().join("out/keys.csv"),
        &d.path().join("out/encrypted.jsonl"),
        &d.path().join("data/clicks.jsonl"),
        "customer/email,customer/age,UserName",
        "jsonl",
    );
    assert!(out.contains("100 rows"), "{out}");
}

/// SPEC §7: every record is accepted or counted as rejected with a reason and a line number;
/// rejected records never reach the output; no value is ever printed.
#[test]
fn bad_rows_are_counted_and_never_printed() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    let mut data = Vec::new();
    data.extend_from_slice(HEADER.as_bytes()); // line 1
    data.extend_from_slice(good_rows(3).as_bytes()); // lines 2-4
    // line 5: too few columns
    data.extend_from_slice(b"sess-x,cust-x,leak1@example.com,LeakNameOne\n");
    // line 6: too many columns
    data.extend_from_slice(
        b"sess-x,cust-x,leak2@example.com,LeakNameTwo,2024-03-01 10:00:00,1,p,extra\n",
    );
    // line 7: invalid UTF-8
    data.extend_from_slice(
        b"sess-x,cust-x,leak3@example.com,Leak\xff\xfeThree,2024-03-01 10:00:00,1,p\n",
    );
    // line 8: empty keyField
    data.extend_from_slice(b",cust-x,leak4@example.com,LeakNameFour,2024-03-01 10:00:00,1,p\n");
    // line 9: unparseable timestamp
    data.extend_from_slice(b"sess-x,cust-x,leak5@example.com,LeakNameFive,01/03/2024 10:00,1,p\n");
    // line 10: failed validation (no @)
    data.extend_from_slice(
        b"sess-x,cust-x,leak6-at-example.com,LeakNameSix,2024-03-01 10:00:00,1,p\n",
    );
    // lines 11-12: a quoted field with a newline (one record, starts on line 11), then one bad
    data.extend_from_slice(
        b"sess-y,cust-y,ok@example.com,\"Multi\nLine\",2024-03-01 10:00:00,1,p\n",
    );
    data.extend_from_slice(b"sess-x,cust-x,leak7@example.com,LeakNameSeven,not a time,1,p\n");
    // line 14: consent that is not a level: accepted, with the default consent
    data.extend_from_slice(
        b"sess-z,cust-z,ok2@example.com,Fine,2024-03-01 10:00:00,\"[1,-2]\",p\n",
    );
    d.write("data/bad.csv", &data);
    d.write("job.json", job("bad.csv", "csv", ""));

    let r = d.run(&["-vv", "run", "job.json", "--json"]);
    assert_eq!(
        r.code,
        1,
        "finished with rejects → exit 1\n{}",
        r.all_output()
    );
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], 12);
    assert_eq!(s["rows_accepted"], 5);
    assert_eq!(s["rows_rejected"], 7);
    assert_eq!(s["consent_defaulted"], 1);
    let by = &s["rejected_by_reason"];
    assert_eq!(by["wrong_column_count"], 2);
    assert_eq!(by["invalid_utf8"], 1);
    assert_eq!(by["missing_key_field"], 1);
    assert_eq!(by["unparseable_timestamp"], 2);
    assert_eq!(by["failed_validation"], 1);
    let input = &s["inputs"][0]["rejects"];
    assert_eq!(
        input["wrong_column_count"]["lines"],
        serde_json::json!([5, 6])
    );
    assert_eq!(input["invalid_utf8"]["lines"], serde_json::json!([7]));
    assert_eq!(input["missing_key_field"]["lines"], serde_json::json!([8]));
    assert_eq!(
        input["unparseable_timestamp"]["lines"],
        serde_json::json!([9, 13])
    );
    assert_eq!(input["failed_validation"]["lines"], serde_json::json!([10]));
    assert!(
        input["failed_validation"]["first_detail"]
            .as_str()
            .unwrap()
            .contains("Email")
    );

    // the human summary too
    let human = d.run(&["-vv", "run", "job.json"]);
    assert_eq!(human.code, 1);
    assert!(
        human.stdout.contains("wrong_column_count"),
        "{}",
        human.stdout
    );

    for out in [r.all_output(), human.all_output()] {
        for leak in ["leak", "Leak", "secretmail", "Secret Name", "Multi"] {
            assert!(!out.contains(leak), "{leak:?} printed:\n{out}");
        }
    }
    let enc = d.read("out/encrypted.csv");
    // header + 5 records (the multi-line UserName is PII: its ciphertext is one line)
    assert_eq!(enc.lines().count(), 1 + 5);
    assert!(
        !enc.contains("sess-x"),
        "a rejected record reached the output"
    );
}

#[test]
fn jsonl_bad_lines_are_counted() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    let good = r#"{"SessionId":"s","Email":"a@b","UserName":"n","Time":"2024-03-01 10:00:00"}"#;
    let data = format!(
        "{good}\n{{\"SessionId\":\"s\",\"Email\":\"leak@x\"\n[1,2]\n\n{{\"Email\":\"a@b\",\"Time\":\"2024-03-01 10:00:00\"}}\n{good}\n"
    );
    d.write("data/x.jsonl", data);
    d.write("job.json", job("x.jsonl", "jsonl", ""));
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], 5, "blank line 4 is not a record");
    assert_eq!(s["rows_accepted"], 2);
    assert_eq!(s["rejected_by_reason"]["bad_json"], 2);
    assert_eq!(s["rejected_by_reason"]["missing_key_field"], 1);
    assert_eq!(
        s["inputs"][0]["rejects"]["bad_json"]["lines"],
        serde_json::json!([2, 3])
    );
    assert!(!r.all_output().contains("leak"));
}

/// Configuration errors are reported before any data is read, naming the file and the setting;
/// nothing is written (no output, no key store).
#[test]
fn config_errors_fail_before_any_data_is_read() {
    type Setup = Box<dyn Fn(&JobDir)>;
    let cases: Vec<(&str, Setup, Vec<&str>)> = vec![
        (
            "misspelt job field",
            Box::new(|d: &JobDir| {
                d.write(
                    "job.json",
                    job("*.csv", "csv", "").replace("encrypted_data", "encrypted_dta"),
                )
            }),
            vec!["job.json", "encrypted_dta"],
        ),
        (
            "missing contract",
            Box::new(|d: &JobDir| {
                d.write(
                    "job.json",
                    job("*.csv", "csv", "").replace("\"1.0.0\" }", "\"9.9.9\" }"),
                )
            }),
            vec!["test/clicks/9.9.9", "not found"],
        ),
        (
            "unknown connector type",
            Box::new(|d: &JobDir| {
                d.write("job.json", job("*.csv", "csv", ""));
                d.write(
                    "keylink.yaml",
                    "connectors:\n  files: { type: ftp, root: . }\n",
                );
            }),
            vec!["keylink.yaml", "ftp"],
        ),
        (
            "bad regex",
            Box::new(|d: &JobDir| {
                d.write("job.json", job("*.csv", "csv", ""));
                d.write(
                    "contracts/c.json",
                    contract("").replace("^[^@]+@[^@]+$", "(["),
                );
            }),
            vec!["c.json", "validations[0].value"],
        ),
        (
            "bad timestamp pattern",
            Box::new(|d: &JobDir| {
                d.write(
                    "job.json",
                    job("*.csv", "csv", "").replace("yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd 'HH:mm"),
                )
            }),
            vec!["job.json", "timestamp_config"],
        ),
        (
            "unknown connector name",
            Box::new(|d: &JobDir| {
                d.write(
                    "job.json",
                    job("*.csv", "csv", "").replacen("\"files\"", "\"lake\"", 1),
                )
            }),
            vec!["source_data.data_connector_ref.name", "lake"],
        ),
        (
            "unknown format",
            Box::new(|d: &JobDir| d.write("job.json", job("*.csv", "parquet", ""))),
            vec!["job.json", "parquet"],
        ),
    ];
    for (name, setup, expect) in cases {
        let d = JobDir::new();
        d.write("contracts/c.json", contract(""));
        d.write("data/clicks.csv", format!("{HEADER}{}", good_rows(5)));
        setup(&d);
        let before = files_under(d.path());
        let r = d.run(&["run", "job.json"]);
        assert_eq!(r.code, 2, "{name}: {}", r.all_output());
        for e in expect {
            assert!(
                r.stderr.contains(e),
                "{name}: expected {e:?} in:\n{}",
                r.stderr
            );
        }
        assert_eq!(
            files_under(d.path()),
            before,
            "{name}: something was written"
        );
    }
}

/// A job that fails midway (here: a second input with other columns) leaves no output at all.
#[test]
fn failed_job_leaves_no_partial_output() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("data/a.csv", format!("{HEADER}{}", good_rows(20_000)));
    d.write(
        "data/b.csv",
        "SessionId,Email,UserName,Time,Other\ns,a@b,n,2024-03-01 10:00:00,x\n",
    );
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("b.csv"), "{}", r.stderr);
    assert!(r.stderr.contains("same header"), "{}", r.stderr);
    let outs = files_under(&d.path().join("out"));
    assert!(outs.is_empty(), "partial outputs left behind: {outs:?}");
}

/// A job over `rows` good rows, in the key group `nightly` (`batch_job_group_id`).
fn key_group_job(rows: usize) -> JobDir {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("data/clicks.csv", format!("{HEADER}{}", good_rows(rows)));
    d.write(
        "job.json",
        job("*.csv", "csv", r#", "batch_job_group_id": "nightly""#),
    );
    d
}

#[test]
fn a_key_group_reuses_keys_across_runs() {
    let d = key_group_job(40);
    let first = d.run(&["run", "job.json", "--json"]);
    assert_eq!(first.code, 0, "{}", first.all_output());
    let enc1 = d.read("out/encrypted.csv");
    let keys1 = d.read("out/keys.csv");
    let second = d.run(&["run", "job.json", "--json"]);
    assert_eq!(second.code, 0, "{}", second.all_output());
    let s1: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    let s2: serde_json::Value = serde_json::from_str(&second.stdout).unwrap();
    assert!(s1["keys_created"].as_u64().unwrap() > 0);
    assert_eq!(s2["keys_created"], 0);
    assert_eq!(s2["keys_reused"], s1["keys_created"]);
    // deterministic encryption + the same keys: the same output, and the export still holds
    // every key the output needs
    assert_eq!(d.read("out/encrypted.csv"), enc1);
    let mut k1: Vec<&str> = keys1.lines().collect();
    let keys2 = d.read("out/keys.csv");
    let mut k2: Vec<&str> = keys2.lines().collect();
    k1.sort();
    k2.sort();
    assert_eq!(k1, k2);

    // without a group, every run gets fresh keys
    d.write("job.json", job("*.csv", "csv", ""));
    let third = d.run(&["run", "job.json", "--json"]);
    let s3: serde_json::Value = serde_json::from_str(&third.stdout).unwrap();
    assert_eq!(s3["keys_reused"], 0);
    assert_ne!(d.read("out/encrypted.csv"), enc1);
}

/// In a key group, the keys export is the same file from run to run, byte for byte: the run
/// that creates the keys and those that find them, with batches resolved concurrently in any
/// order (a key is exported with the first record that uses it).
#[test]
fn a_key_groups_keys_export_is_the_same_run_after_run() {
    // > 3 batches of 8192 records; a session's records cross batches
    let d = key_group_job(30_000);
    let mut first: Option<String> = None;
    for run in 0..6 {
        let r = d.run(&["run", "job.json", "--json", "--parallelism", "6"]);
        assert_eq!(r.code, 0, "{}", r.all_output());
        let keys = d.read("out/keys.csv");
        match &first {
            None => first = Some(keys),
            Some(k) => assert!(*k == keys, "run {run}: the keys export differs"),
        }
    }
}

#[test]
fn validate_checks_without_writing() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("data/a.csv", format!("{HEADER}{}", good_rows(3)));
    d.write("job.json", job("*.csv", "csv", ""));
    let before = files_under(d.path());
    let r = d.run(&["validate", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(r.stdout.contains("is valid"), "{}", r.stdout);
    assert!(r.stdout.contains("a.csv"), "{}", r.stdout);
    assert_eq!(files_under(d.path()), before, "validate wrote something");

    d.write("job.json", job("*.csv", "csv", "").replace("Time", ""));
    let r = d.run(&["validate", "job.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(r.stderr.contains("timestamp_config.field"), "{}", r.stderr);
}

#[test]
fn version_lists_compiled_components() {
    let r = keylink(&root(), &["--version"]);
    assert_eq!(r.code, 0);
    for c in ["keylink 0.1.0", "local", "csv", "jsonl", "embedded"] {
        assert!(r.stdout.contains(c), "{}", r.stdout);
    }
}

#[test]
fn demo_runs_and_its_output_decrypts_with_stock_tink() {
    let d = tempfile::tempdir().unwrap();
    let r = keylink(d.path(), &["demo", "demo", "--rows", "400"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    assert!(r.stdout.contains("failed_validation"), "{}", r.stdout);
    let demo = d.path().join("demo");
    assert!(demo.join("keylink-keys.db.master-key").exists());
    // the demo's last two input rows are deliberately bad: compare the accepted ones
    let input = std::fs::read_to_string(demo.join("data/clickstream.csv")).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    let accepted = lines[..lines.len() - 2].join("\n") + "\n";
    std::fs::write(d.path().join("accepted.csv"), accepted).unwrap();
    let out = tink_check(
        &demo.join("out/clickstream-keys.csv"),
        &demo.join("out/clickstream-encrypted.csv"),
        &d.path().join("accepted.csv"),
        "UserId,Email,UserName",
        "csv",
    );
    assert!(out.contains("400 rows"), "{out}");

    // the two derived datasets: analytics (purpose 1) and the masked recommender set
    let analytics = std::fs::read_to_string(demo.join("out/clickstream-analytics.csv")).unwrap();
    let recommender =
        std::fs::read_to_string(demo.join("out/clickstream-recommender.csv")).unwrap();
    assert!(analytics.contains("cust-"), "analytics decrypts UserId");
    assert!(
        !analytics.contains("@example.com"),
        "analytics must not decrypt Email"
    );
    assert!(!recommender.contains("cust-"), "recommender masks UserId");
    assert!(
        !recommender.contains("@example.com"),
        "recommender masks Email"
    );
    assert!(analytics.lines().count() > 1 && recommender.lines().count() > 1);
    assert!(recommender.lines().count() < analytics.lines().count());
}

/// Many batches processed on many workers come out in input order: stock Tink checks the
/// encrypted output row by row against the input.
#[test]
fn output_order_survives_parallel_batches() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(r#", "UserId": 1"#));
    // > 3 batches of 8192 records
    d.write("data/clicks.csv", format!("{HEADER}{}", good_rows(30_000)));
    d.write("job.json", job("*.csv", "csv", ""));
    let r = d.run(&["run", "job.json", "--json", "--parallelism", "6"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let out = tink_check(
        &d.path().join("out/keys.csv"),
        &d.path().join("out/encrypted.csv"),
        &d.path().join("data/clicks.csv"),
        "Email,UserName,UserId",
        "csv",
    );
    assert!(out.contains("30000 rows"), "{out}");
}

/// Raw rejected records go to `rejected_data` when (and only when) it is configured.
#[test]
fn rejected_records_go_only_to_a_configured_target() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write(
        "data/x.csv",
        format!("{HEADER}s1,u1,a@b,Ann,2024-03-01 10:00:00,1,p\ns2,u2,no-at-sign,\"Bob, \"\"Jr\"\"\",2024-03-01 10:00:00,1,p\ns3,u3,c@d,Cy,yesterday,1,p\n"),
    );
    let j = job("x.csv", "csv", "").replacen(
        "\"encrypted_data\"",
        r#""rejected_data": { "target": { "data_connector_ref": { "name": "files" },
             "path_prefix": "quarantine", "file_name": "rejected.csv" } },
           "encrypted_data""#,
        1,
    );
    d.write("job.json", j);
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 1, "{}", r.all_output());
    let rejected = d.read("quarantine/rejected.csv");
    assert_eq!(
        rejected.lines().count(),
        1 + 2,
        "header + 2 records: {rejected}"
    );
    assert!(rejected.starts_with(HEADER), "{rejected}");
    assert!(
        rejected.contains("s2,u2,no-at-sign,\"Bob, \"\"Jr\"\"\",2024-03-01"),
        "quoting lost: {rejected}"
    );
    assert!(rejected.contains("s3,u3,c@d"), "{rejected}");
    assert!(
        !rejected.contains("s1,"),
        "an accepted record was quarantined"
    );
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let outs = s["outputs"].as_array().unwrap();
    assert!(
        outs.iter()
            .any(|o| o["name"] == "rejected" && o["rows"] == 2),
        "{s}"
    );
}

/// The keys export: one row per key, `expiresAt` = window start + the policy's retention.
#[test]
fn keys_export_carries_policy_and_expiry() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write(
        "data/x.csv",
        format!("{HEADER}s1,u1,a@b,Ann,2024-03-01 10:00:00,1,p\n"),
    );
    d.write(
        "keylink.yaml",
        "connectors:\n  files: { type: local, root: . }\npolicies:\n  short: { retention_days: 30 }\n",
    );
    let j = job("x.csv", "csv", "").replacen(
        "\"encrypted_data\"",
        "\"policy_id\": \"short\", \"encrypted_data\"",
        1,
    );
    d.write("job.json", j);
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let keys = d.read("out/keys.csv");
    let row = keys.lines().nth(1).unwrap();
    let fields: Vec<&str> = row.rsplitn(3, ',').collect(); // expiresAt, policyId, rest
    // 2024-03-01 10:00 Europe/Amsterdam is 09:00Z; its UTC day starts 1709251200000
    assert_eq!(
        fields[0],
        (1_709_251_200_000i64 + 30 * 86_400_000).to_string()
    );
    assert_eq!(fields[1], "short");
    // an unknown policy is a config error, before anything is written
    let j = job("x.csv", "csv", "").replacen(
        "\"encrypted_data\"",
        "\"policy_id\": \"forever\", \"encrypted_data\"",
        1,
    );
    d.write("job.json", j);
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("policy_id"), "{}", r.stderr);
}
