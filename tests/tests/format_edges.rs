//! End-to-end: format edge cases of issue #7 — a CSV record over the size limit, empty inputs.
//! All data is synthetic.

mod common;

use common::*;

const HEADER: &str = "SessionId,UserId,Email,UserName,Time,Consent,Page\n";
const KEYS_HEADER: &str = "keyLink,encryptionKey,policyId,expiresAt\n";

fn row(i: usize) -> String {
    format!("s{i},u{i},mail{i}@example.com,Name {i},2024-03-01 10:00:00,1,p{i}\n")
}

/// Adds a derived output (`out/derived.<ext>`) and a rejected_data target to a job.
fn with_derived_and_rejected(job: &str, ext: &str) -> String {
    job.replacen(
        "\"encrypted_data\"",
        &format!(
            r#""rejected_data": {{ "target": {{ "data_connector_ref": {{ "name": "files" }},
                 "path_prefix": "out", "file_name": "rejected.{ext}" }} }},
               "derived_data": [ {{ "target": {{ "data_connector_ref": {{ "name": "files" }},
                 "path_prefix": "out", "file_name": "derived.{ext}" }}, "consent_levels": [1] }} ],
               "encrypted_data""#
        ),
        1,
    )
}

/// One CSV record over the 64 MiB limit is a counted reject (`record_too_large`, its line, never
/// its value); the records after it are processed and the job finishes with exit code 1.
#[test]
fn csv_record_too_large_is_rejected_and_the_job_goes_on() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    let mut data = Vec::with_capacity(66 << 20);
    data.extend_from_slice(HEADER.as_bytes()); // line 1
    data.extend_from_slice(row(1).as_bytes()); // line 2
    // line 3: a 65 MiB record; its value has a marker that must never be printed
    data.extend_from_slice(b"s2,u2,\"HUGEVALUE");
    data.resize(data.len() + (65 << 20), b'z');
    data.extend_from_slice(b"\",N,2024-03-01 10:00:00,1,p\n");
    // a record of 40 MiB is under the limit (it used to be effectively 32 MiB): line 4
    data.extend_from_slice(b"s3,u3,big@example.com,\"");
    data.resize(data.len() + (40 << 20), b'n');
    data.extend_from_slice(b"\",2024-03-01 10:00:00,1,p\n");
    data.extend_from_slice(row(4).as_bytes()); // line 5
    d.write("data/in.csv", &data);
    drop(data);
    d.write(
        "job.json",
        with_derived_and_rejected(&job("in.csv", "csv", ""), "csv"),
    );
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 1, "finished with one reject: {}", r.all_output());
    assert!(!r.all_output().contains("HUGEVALUE"), "a value was printed");
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], 4, "{s}");
    assert_eq!(s["rows_accepted"], 3, "{s}");
    assert_eq!(s["rejected_by_reason"]["record_too_large"], 1, "{s}");
    let rejects = &s["inputs"][0]["rejects"]["record_too_large"];
    assert_eq!(rejects["lines"], serde_json::json!([3]), "{s}");
    let enc = d.read("out/encrypted.csv");
    assert_eq!(enc.lines().count(), 1 + 3);
    assert!(enc.lines().nth(3).unwrap().starts_with("s4,u4,"));
    assert!(!enc.contains("HUGEVALUE"));
    // the oversized record's bytes are not kept anywhere, not even in rejected_data
    let rejected = d.read("out/rejected.csv");
    assert_eq!(rejected, HEADER, "{}", &rejected[..rejected.len().min(200)]);
}

/// A 0-byte input. JSON Lines: the keys export still carries its header and the data outputs are
/// empty objects (JSON Lines has no header); the job succeeds. CSV: an input without a header row
/// cannot be checked against the contract, so when the first input has none the job is refused
/// before anything is written; an empty input after one with a header is skipped, and the keys
/// export and data outputs carry their headers once.
#[test]
fn empty_input_keys_export_has_its_header() {
    // JSON Lines
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("data/in.jsonl", "");
    d.write(
        "job.json",
        with_derived_and_rejected(&job("in.jsonl", "jsonl", ""), "jsonl"),
    );
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], 0, "{s}");
    assert_eq!(d.read("out/keys.csv"), KEYS_HEADER);
    for out in ["encrypted", "derived", "rejected"] {
        assert_eq!(d.read(&format!("out/{out}.jsonl")), "", "{out}");
    }

    // CSV: the only input is empty
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write("data/b.csv", "");
    let j = with_derived_and_rejected(&job("*.csv", "csv", ""), "csv");
    d.write("job.json", &j);
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 2, "{}", r.all_output());
    assert!(
        r.stderr
            .contains("data/b.csv: the CSV input has no header row"),
        "{}",
        r.stderr
    );
    assert!(files_under(&d.path().join("out")).is_empty());

    // CSV: an empty input next to one with a header (b.csv, empty, sorts after a.csv; so does
    // c.csv, with the header: an empty object never decides)
    d.write("data/a.csv", "");
    d.write("data/c.csv", format!("{HEADER}{}", row(1)));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(
        r.code,
        0,
        "an empty first input refused the job: {}",
        r.all_output()
    );
    std::fs::remove_file(d.path().join("data/c.csv")).unwrap();
    d.write("data/a.csv", format!("{HEADER}{}", row(1)));
    let r = d.run(&["run", "job.json"]);
    assert_eq!(r.code, 0, "{}", r.all_output());
    let keys = d.read("out/keys.csv");
    assert!(keys.starts_with(KEYS_HEADER), "{keys}");
    assert_eq!(keys.lines().count(), 2, "{keys}");
    let enc = d.read("out/encrypted.csv");
    assert_eq!(enc.lines().count(), 2, "{enc}");
    assert!(enc.starts_with(HEADER.trim_end()), "{enc}");
    assert_eq!(d.read("out/derived.csv").lines().count(), 2);
    assert_eq!(
        d.read("out/rejected.csv"),
        HEADER,
        "the rejected copy starts with the input's header"
    );
}

/// A CSV of several MiB is cut into pieces between records, which the batches decode on every
/// core (#8). Every record is still accepted or rejected once, at its line, in input order, with
/// quoted line breaks and CRLF, blank lines, and rejects of three kinds (two found while
/// decoding, one by the contract's validation) spread over the pieces. (The property test of the
/// CSV splitter, `decoding_in_pieces_gives_what_decoding_whole_gives`, checks every cut; this
/// checks the pipeline that uses them.)
#[test]
fn a_large_csv_decoded_in_pieces_keeps_every_record_at_its_line() {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    let mut data = HEADER.as_bytes().to_vec();
    let mut line = 2u64;
    let mut accepted: Vec<String> = Vec::new();
    let (mut wrong, mut not_utf8, mut invalid) = (Vec::new(), Vec::new(), Vec::new());
    let rows = 60_000;
    for i in 0..rows {
        if i % 199 == 3 {
            data.push(b'\n');
            line += 1;
        }
        let at = line;
        if i % 101 == 7 {
            data.extend(format!("s{i},u{i},m{i}@example.com,N,2024-03-01 10:00:00,1\n").bytes());
            wrong.push(at);
        } else if i % 103 == 9 {
            data.extend(format!("s{i},u{i},m{i}@example.com,N,2024-03-01 10:00:00,1,p").bytes());
            data.extend_from_slice(b"\xFF\n");
            not_utf8.push(at);
        } else if i % 107 == 11 {
            data.extend(format!("s{i},u{i},no-at-sign,N,2024-03-01 10:00:00,1,p{i}\n").bytes());
            invalid.push(at);
        } else if i % 3 == 1 {
            // a name over three lines, with quotes, ended by CRLF: 2 of every 5 line breaks are
            // inside quotes, so a cut that ignored quotes would most likely split a record
            let name = format!("\"Name\n\"\"{i}\"\"\r\nX\"");
            data.extend(
                format!("s{i},u{i},m{i}@example.com,{name},2024-03-01 10:00:00,1,p{i}\r\n").bytes(),
            );
            accepted.push(format!("s{i}"));
            line += 2;
        } else {
            data.extend(row(i).bytes());
            accepted.push(format!("s{i}"));
        }
        line += 1;
    }
    assert!(
        data.len() > 4 << 20,
        "{} bytes: more than a few pieces",
        data.len()
    );
    d.write("data/in.csv", &data);
    d.write(
        "job.json",
        with_derived_and_rejected(&job("in.csv", "csv", ""), "csv"),
    );
    let r = d.run(&["run", "job.json", "--json"]);
    assert_eq!(r.code, 1, "finished with rejects: {}", r.all_output());
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["rows_read"], rows, "{s}");
    assert_eq!(s["rows_accepted"], accepted.len(), "{s}");
    let rejects = &s["inputs"][0]["rejects"];
    for (reason, lines) in [
        ("wrong_column_count", &wrong),
        ("invalid_utf8", &not_utf8),
        ("failed_validation", &invalid),
    ] {
        assert_eq!(rejects[reason]["count"], lines.len(), "{reason}: {s}");
        let listed: Vec<u64> = serde_json::from_value(rejects[reason]["lines"].clone()).unwrap();
        assert!(
            listed.len() >= 50,
            "{reason}: {} lines listed",
            listed.len()
        );
        assert_eq!(listed[..], lines[..listed.len()], "{reason}");
    }
    // the encrypted output holds the accepted records, once each, in input order
    let sessions = |file: &str| -> Vec<String> {
        let mut reader = csv::Reader::from_path(d.path().join(file)).unwrap();
        reader
            .records()
            .map(|r| r.unwrap()[0].to_string())
            .collect()
    };
    assert_eq!(sessions("out/encrypted.csv"), accepted);
    // every reject's raw record is in the rejected output
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(d.path().join("out/rejected.csv"))
        .unwrap();
    let raw = reader.byte_records().count();
    assert_eq!(raw, wrong.len() + not_utf8.len() + invalid.len());
}
