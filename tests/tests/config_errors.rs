//! End-to-end: a configuration error names the file, the setting's path and its position exactly
//! once (issue #7: `connectors.fs: connectors.fs: … at line 2 column 22 at line 2 column 7`).

mod common;

use common::*;

/// The one error line of a failed run, without the `keylink: error: ` prefix.
fn error_line(r: &Run) -> String {
    assert_eq!(r.code, 2, "a config error exits 2: {}", r.all_output());
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("keylink: error: "))
        .collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    lines[0]["keylink: error: ".len()..].to_string()
}

fn dir_with_job() -> JobDir {
    let d = JobDir::new();
    d.write("contracts/c.json", contract(""));
    d.write(
        "data/in.csv",
        "SessionId,UserId,Email,UserName,Time,Consent\n",
    );
    d.write("job.json", job("in.csv", "csv", ""));
    d
}

#[test]
fn config_errors_name_path_and_position_once() {
    let d = dir_with_job();

    // a YAML config: an unknown setting of a connector (deserialized through typetag)
    d.write(
        "bad-field.yaml",
        "connectors:\n  files: { type: local, rot: . }\ncontracts: ./contracts\n",
    );
    let r = d.run(&["validate", "job.json", "--config", "bad-field.yaml"]);
    assert_eq!(
        error_line(&r),
        "bad-field.yaml: connectors.files.rot (line 2, column 25): unknown field `rot`, \
         expected `root`"
    );

    // a YAML config: an unknown connector type
    d.write(
        "bad-type.yaml",
        "connectors:\n  files: { type: lcal, root: . }\ncontracts: ./contracts\n",
    );
    let r = d.run(&["validate", "job.json", "--config", "bad-type.yaml"]);
    // the list of known types depends on the connectors compiled in (test builds also have the
    // testkit's `memory`)
    let line = error_line(&r);
    assert!(
        line.starts_with(
            "bad-type.yaml: connectors.files.type (line 2, column 18): unknown variant `lcal`, \
             expected "
        ) && line.contains("`local`")
            && line.contains("`s3`")
            && line.matches("line ").count() == 1,
        "{line}"
    );

    // a JSON job: a misspelt setting, nested
    let job = d.read("job.json").replace(
        "\"default_consent_levels\": [0]",
        "\"default_consent_level\": [0]",
    );
    d.write("bad-job.json", job);
    let r = d.run(&["validate", "bad-job.json"]);
    assert_eq!(
        error_line(&r),
        "bad-job.json: consent.default_consent_level (line 4, column 38): unknown field \
         `default_consent_level`, expected `default_consent_levels` or `consent_level_extractor`"
    );

    // a JSON job: a bad format setting (typetag, externally tagged)
    let job = d
        .read("job.json")
        .replace("{ \"csv\": {} }", "{ \"csv\": { \"delimter\": \";\" } }");
    d.write("bad-format.json", job);
    let r = d.run(&["validate", "bad-format.json"]);
    assert_eq!(
        error_line(&r),
        "bad-format.json: source_data.data_type.csv.delimter (line 3, column 76): unknown field \
         `delimter`, expected `charset` or `delimiter`"
    );

    // a contract
    d.write(
        "contracts/c.json",
        contract("").replace("\"keyField\"", "\"keyFeld\""),
    );
    let r = d.run(&["validate", "job.json"]);
    let e = error_line(&r);
    assert_eq!(
        e,
        "job.json: event_contract_ref: contracts/c.json: keyFeld (line 3, column 11): unknown \
         field `keyFeld`, expected one of `ref`, `keyField`, `key_field`, `dataSubjectField`, \
         `data_subject_field`, `piiFields`, `pii_fields`, `fieldMetadata`, `field_metadata`, \
         `validations`, `schema`, `id`, `state`, `isPublic`, `is_public`, `metadata`, \
         `projectId`, `project_id`, `checksum`"
    );
}
