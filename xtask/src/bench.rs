//! `cargo xtask bench [--rows N] [--repeat N] [--big] [--key-store postgres]`: keylink's speed and memory next to the CSV ceiling
//! and to a well-written pandas script doing the same work (issue #8), on one generated
//! clickstream, in one run; each workload's median of `--repeat` runs (default 3). The copies,
//! A p1, A p2 and B, which the targets compare, run in turns (one run of each per round). Each
//! measured run starts after a `sync` and writes outputs that do not exist yet. Writes
//! `target/bench/results.md` and `results.json`.
//!
//! | workload | what |
//! |---|---|
//! | copy | the csv crate reading and writing every record (`xsv cat rows` does the same) |
//! | A p1 / A p2 | `keylink run`: encrypt + keys export, fresh keys, `--parallelism` 1 and 2 |
//! | A p2, store holding A's keys | A p2 again, new keys, on the store A p2 left (in the embedded store's key log) |
//! | keys stats, folding … | `keylink keys stats` on that store: folds the key log into the indexed tables first |
//! | A again | A with every key already in the store (a rerun with a `batch_job_group_id`) |
//! | B | A + three derived outputs (granular, cumulative, masked) |
//! | decrypt | `keylink decrypt` of A's output, purposes 1,2 cumulative: a third of the records, every PII field decrypted |
//! | A jsonl | A on the same data as JSON Lines |
//! | pandas B | B's work in pandas + `cryptography` (AES-SIV, one cipher per key, each distinct value encrypted once) + `hmac` |
//!
//! Targets: A ≤ 1.5× and B ≤ 2.5× the copy; pandas B ≥ 8× B; A p2 ≥ 1.7× faster than A p1;
//! peak RSS < 100 MB at 1M rows, and within 10 % of that at 10M (`--big`: 10M rows, 2 GB). The
//! results say which are met; the bench does not fail on them (only `--big` checks its memory
//! bound: A p2 under 110 MB).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{Measured, generate_csv, measure, run, target_dir};

/// Where the workloads write, under `target/bench/`.
const OUTPUT_DIRS: [&str; 3] = ["out", "out-pandas", "decrypted"];

/// Pinned: the pandas comparison.
const PANDAS: &str = "pandas==2.2.3";
const CRYPTOGRAPHY: &str = "cryptography==46.0.3";

/// One measured workload.
struct Row {
    name: &'static str,
    m: Measured,
}

pub fn bench(args: &[&str]) -> Result<()> {
    let mut rows: u64 = 1_000_000;
    let mut big = false;
    let mut key_store = "embedded";
    let mut repeat: usize = 3;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--key-store" => {
                key_store = it
                    .next()
                    .context("--key-store needs embedded or postgres")?;
                if !["embedded", "postgres"].contains(&key_store) {
                    bail!("unknown key store {key_store}: embedded or postgres");
                }
            }
            "--rows" => {
                rows = it
                    .next()
                    .context("--rows needs a number")?
                    .parse()
                    .context("--rows needs a number")?
            }
            "--repeat" => {
                repeat = it
                    .next()
                    .context("--repeat needs a number")?
                    .parse()
                    .context("--repeat needs a number")?;
                if repeat == 0 {
                    bail!("--repeat needs at least 1");
                }
            }
            "--big" => big = true,
            other => bail!("unknown bench option {other}"),
        }
    }
    if big {
        rows = 10_000_000; // ~2 GB
    }
    let dir = target_dir().join("bench");
    for d in ["data", "contracts", "jsonl"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let input = dir.join(format!("data/clicks-{rows}.csv"));
    if !input.exists() {
        eprintln!("xtask: generating {} rows into {}", rows, input.display());
        generate_csv(&input, rows)?;
    }
    let size = std::fs::metadata(&input)?.len();
    let jsonl = dir.join(format!("jsonl/clicks-{rows}.jsonl"));
    if !big && !jsonl.exists() {
        csv_to_jsonl(&input, &jsonl)?;
    }
    std::fs::write(dir.join("contracts/bench.json"), BENCH_CONTRACT)?;
    std::fs::write(dir.join("keylink.yaml"), BENCH_CONFIG)?;
    let name = format!("clicks-{rows}.csv");
    let write_job = |file: &str, job: String| std::fs::write(dir.join(file), job);
    write_job("job.json", BENCH_JOB.replace("INPUT", &name))?;
    write_job(
        "job-group.json",
        BENCH_JOB.replace("INPUT", &name).replace(
            "\"timestamp_config\"",
            "\"batch_job_group_id\": \"bench\", \"timestamp_config\"",
        ),
    )?;
    write_job(
        "job-sharded.json",
        BENCH_JOB
            .replace(
                "\"path_prefix\": \"data\"",
                &format!("\"path_prefix\": \"shards/{rows}\""),
            )
            .replace("INPUT", "*.csv")
            .replace(
                "\"timestamp_config\"",
                "\"batch_job_group_id\": \"bench\", \"timestamp_config\"",
            )
            .replace(
                "\"path_prefix\": \"out\"",
                "\"path_prefix\": \"out-sharded\"",
            ),
    )?;
    write_job(
        "job-derived.json",
        BENCH_JOB
            .replace("INPUT", &name)
            .replacen("\"encryption_keys_data\"", BENCH_DERIVED, 1),
    )?;
    write_job(
        "job-jsonl.json",
        BENCH_JOB
            .replace("INPUT", &format!("clicks-{rows}.jsonl"))
            .replace("\"path_prefix\": \"data\"", "\"path_prefix\": \"jsonl\"")
            .replace("{ \"csv\": {} }", "{ \"jsonl\": {} }")
            .replace("encrypted.csv", "encrypted.jsonl"),
    )?;

    run(crate::cargo().args(["build", "--release", "-p", "keylink", "-p", "xtask"]))?;
    let release = target_dir().join("release");
    let keylink = |args: &[&str]| {
        let mut c = Command::new(release.join("keylink"));
        c.args(args);
        c
    };
    let fresh_keys = || {
        for f in ["keys.db", "keys.db-wal", "keys.db-shm"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    };
    let job = |f: &str| dir.join(f).display().to_string();
    let mut results: Vec<Row> = Vec::new();

    // Every measured run writes outputs that do not exist yet: before it, the outputs of earlier
    // runs are removed (not timed; `decrypt` keeps the input it reads). Deleting the old file
    // is the file system's work, and it weighed unequally: measured side by side (medians of
    // 6), truncating the copy's previous 200 MB took 0.22 s of its 0.68 s, and A's renames
    // over its previous 415 MB 0.12 s of 1.41 s.
    let clear_outputs = || -> Result<()> {
        for d in OUTPUT_DIRS {
            crate::remove_dir(&dir.join(d))?;
        }
        // `xsv -o` does not make the directory
        std::fs::create_dir_all(dir.join("out"))?;
        Ok(())
    };
    // before each run of a workload that must create its keys
    let fresh: &dyn Fn() -> Result<()> = &|| {
        fresh_keys();
        clear_outputs()
    };
    // before each run of any other workload
    let fresh_outputs: &dyn Fn() -> Result<()> = &clear_outputs;
    let a = |parallelism: &str| {
        keylink(&[
            "run",
            "--no-progress",
            "--json",
            "--parallelism",
            parallelism,
            &job("job.json"),
        ])
    };
    // The targets compare these with the copy: they run in turns (copy, A p1, A p2, B, copy,
    // …), so that the machine's state (other work, the disk's writeback) weighs on all alike;
    // run one after the other, the copy's median alone moved A's ratio from 1.9 to 2.5.
    let mut copy = Command::new(release.join("xtask"));
    copy.arg("csv-copy")
        .arg(&input)
        .arg(dir.join("out/copy.csv"));
    let mut xsv = Command::new("xsv");
    xsv.args(["cat", "rows", "-o"])
        .arg(dir.join("out/xsv.csv"))
        .arg(&input);
    let (mut a1, mut a2) = (a("1"), a("2"));
    let mut b = keylink(&["run", "--no-progress", "--json", &job("job-derived.json")]);
    let mut turns: Vec<Turn> = vec![("copy (csv crate)", fresh_outputs, &mut copy)];
    if which("xsv") {
        turns.push(("copy (xsv cat rows)", fresh_outputs, &mut xsv));
    }
    turns.extend([
        ("A p1", fresh, &mut a1),
        ("A p2", fresh, &mut a2),
        ("B (A + 3 derived)", fresh, &mut b),
    ]);
    let mut in_turns = in_turns(repeat, &mut turns)?;
    // B is reported after decrypt, as before
    let b = in_turns.pop().expect("B measured");
    results.extend(in_turns);
    if key_store == "postgres" {
        // B (the last in turns) left its keys, which are A's, in keys.db: count them for keys
        // created/s
        let keys = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select (select count(*) from keys) + (select count(*) from key_log)').fetchone()[0])",
            ])
            .arg(dir.join("keys.db"))
            .output()
            .context("counting the embedded store's keys")?;
        let keys: u64 = String::from_utf8_lossy(&keys.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let a = &results
            .iter()
            .find(|r| r.name == "A p2")
            .expect("A p2 measured")
            .m;
        crate::postgres::bench(&dir, &release, rows, a, keys)?;
    }
    // A p2 on the store an A p2 left (its keys in the embedded store's key log)
    results.push(Row {
        name: "A p2, store holding A's keys",
        m: median(
            repeat,
            &|| {
                fresh()?;
                run(a("2").stdout(std::process::Stdio::null()))?;
                clear_outputs()
            },
            &mut a("2"),
        )?,
    });
    // ... and a command that reads the store's tables folds the ~190k logged keys into them
    // first: the cost the key log moves out of the jobs (its rates are not per input row)
    results.push(Row {
        name: "keys stats, folding 190k logged keys",
        // once: the store holds the keys of the last two runs
        m: median(
            1,
            &|| Ok(()),
            &mut keylink(&[
                "keys",
                "stats",
                "--config",
                &dir.join("keylink.yaml").display().to_string(),
            ]),
        )?,
    });
    // A's output for decrypt, then A again with every key in the store
    fresh_keys();
    run(&mut keylink(&[
        "run",
        "--no-progress",
        "--json",
        &job("job-group.json"),
    ]))?;
    results.push(Row {
        name: "A again (keys present)",
        m: median(
            repeat,
            fresh_outputs,
            &mut keylink(&["run", "--no-progress", "--json", &job("job-group.json")]),
        )?,
    });
    let out = |f: &str| dir.join("out").join(f).display().to_string();
    results.push(Row {
        // cumulative: the records with consent level 2 (a third), every PII field decrypted;
        // granular 1,2 matched no record (each has one level) and decrypted nothing
        name: "decrypt A (purposes 1,2, cumulative)",
        m: median(
            repeat,
            // A again's outputs are its input
            &|| crate::remove_dir(&dir.join("decrypted")),
            &mut keylink(&[
                "decrypt",
                "--input",
                &out("encrypted.csv"),
                "--keys",
                &out("keys.csv"),
                "--contract",
                &dir.join("contracts/bench.json").display().to_string(),
                "--purposes",
                "1,2",
                "--type",
                "cumulative",
                "--output",
                &dir.join("decrypted/decrypted.csv").display().to_string(),
            ]),
        )?,
    });
    results.push(b);
    if !big {
        results.push(Row {
            name: "A jsonl",
            m: median(
                repeat,
                fresh,
                &mut keylink(&["run", "--no-progress", "--json", &job("job-jsonl.json")]),
            )?,
        });
        let python = bench_python(&dir)?;
        results.push(Row {
            name: "pandas B",
            m: median(
                repeat,
                fresh_outputs,
                Command::new(&python)
                    .arg(crate::root().join("xtask/bench/pandas_b.py"))
                    .arg(&input)
                    .arg(dir.join("out-pandas")),
            )?,
        });
    }

    // the outputs are several times the input (4 GB at 1M rows): gone once measured
    for d in OUTPUT_DIRS {
        let _ = std::fs::remove_dir_all(dir.join(d));
    }
    report(&dir, rows, size, repeat, &results)?;
    let a = results.iter().find(|r| r.name == "A p2").expect("measured");
    // 1M rows: < 100 MB; 10M rows: within 10 % of that (issue #8)
    if big && a.m.max_rss_kb > 110 * 1024 {
        bail!(
            "A p2's peak RSS {} MB exceeds 110 MB at {rows} rows (the target: within 10 % of \
             the 100 MB bound at 1M rows)",
            a.m.max_rss_kb / 1024
        );
    }
    Ok(())
}

/// The table on stdout and in `results.md`, the figures in `results.json`.
/// A workload run in turns: its name, its setup before each run, its command.
type Turn<'a> = (&'static str, &'a dyn Fn() -> Result<()>, &'a mut Command);

/// Runs every workload of `turns` (its setup, then its command) in turn, `n` rounds: for each,
/// the run with the median time, with the highest peak RSS of its runs.
fn in_turns(n: usize, turns: &mut [Turn]) -> Result<Vec<Row>> {
    let mut runs: Vec<Vec<Measured>> = turns.iter().map(|_| Vec::with_capacity(n)).collect();
    for _ in 0..n {
        for ((_, setup, cmd), runs) in turns.iter_mut().zip(&mut runs) {
            setup()?;
            runs.push(measure(cmd)?);
        }
    }
    Ok(turns
        .iter()
        .zip(runs)
        .map(|((name, _, _), runs)| Row {
            name,
            m: median_of(runs),
        })
        .collect())
}

/// The run with the median time, with the highest peak RSS of all (the memory targets are
/// bounds).
fn median_of(mut runs: Vec<Measured>) -> Measured {
    let n = runs.len();
    let rss = runs.iter().map(|m| m.max_rss_kb).max().unwrap_or(0);
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let mut m = runs.swap_remove(n / 2);
    m.max_rss_kb = rss;
    m
}

/// Runs `setup`, then measures `cmd`, `n` times: the run with the median time, with the highest
/// peak RSS of all (the memory targets are bounds).
fn median(n: usize, setup: &dyn Fn() -> Result<()>, cmd: &mut Command) -> Result<Measured> {
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        setup()?;
        runs.push(measure(cmd)?);
    }
    Ok(median_of(runs))
}

fn report(dir: &Path, rows: u64, size: u64, repeat: usize, results: &[Row]) -> Result<()> {
    let mb = size as f64 / 1e6;
    let get = |n: &str| results.iter().find(|r| r.name == n).map(|r| r.m.seconds);
    let copy = get("copy (csv crate)").expect("measured");
    let mut md = String::new();
    md.push_str(&format!(
        "Input: {rows} rows, {mb:.1} MB CSV (3 PII fields). Machine: {} cores, {}. \
         Command: `cargo xtask bench --rows {rows}` (each row: the median of {repeat} runs, \
         the highest peak RSS).\n\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model()
    ));
    md.push_str("| workload | seconds | × copy | MB/s | rows/s | peak RSS MB |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|\n");
    let mut json = Vec::new();
    for r in results {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.1} |\n",
            r.name,
            r.m.seconds,
            r.m.seconds / copy,
            mb / r.m.seconds,
            rows as f64 / r.m.seconds,
            r.m.max_rss_kb as f64 / 1024.0
        ));
        json.push(format!(
            "{{\"workload\":\"{}\",\"seconds\":{:.4},\"mb_per_s\":{:.2},\"rows_per_s\":{:.0},\"peak_rss_mb\":{:.1}}}",
            r.name,
            r.m.seconds,
            mb / r.m.seconds,
            rows as f64 / r.m.seconds,
            r.m.max_rss_kb as f64 / 1024.0
        ));
    }
    let mut targets = Vec::new();
    let mut check = |what: &str, value: Option<f64>, ok: fn(f64) -> bool| {
        if let Some(v) = value {
            targets.push(format!(
                "- {what}: {v:.2} — {}",
                if ok(v) { "met" } else { "NOT met" }
            ));
        }
    };
    check(
        "A p2 / copy (target ≤ 1.5)",
        get("A p2").map(|a| a / copy),
        |v| v <= 1.5,
    );
    check(
        "B / copy (target ≤ 2.5)",
        get("B (A + 3 derived)").map(|b| b / copy),
        |v| v <= 2.5,
    );
    check(
        "pandas B / B (target ≥ 8)",
        get("pandas B")
            .zip(get("B (A + 3 derived)"))
            .map(|(p, b)| p / b),
        |v| v >= 8.0,
    );
    check(
        "A p1 / A p2 (target ≥ 1.7)",
        get("A p1").zip(get("A p2")).map(|(a, b)| a / b),
        |v| v >= 1.7,
    );
    md.push('\n');
    md.push_str(&targets.join("\n"));
    md.push('\n');
    print!("{md}");
    std::fs::write(dir.join("results.md"), &md)?;
    std::fs::write(
        dir.join("results.json"),
        format!(
            "{{\"rows\":{rows},\"bytes\":{size},\"results\":[{}]}}\n",
            json.join(",")
        ),
    )?;
    eprintln!("xtask: wrote {}", dir.join("results.md").display());
    Ok(())
}

/// A virtualenv with pandas and cryptography for the comparison (installed once, pinned).
fn bench_python(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    let marker = venv.join(".keylink-bench-pandas");
    if !marker.exists() {
        if !python.exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PANDAS,
            CRYPTOGRAPHY,
        ]))
        .context("installing pandas and cryptography for the comparison")?;
        std::fs::write(&marker, "")?;
    }
    Ok(python)
}

/// The same rows as JSON Lines (every value a string), for workload "A jsonl".
fn csv_to_jsonl(input: &Path, output: &Path) -> Result<()> {
    use std::io::Write;
    let mut r = csv::Reader::from_path(input)?;
    let header: Vec<String> = r.headers()?.iter().map(String::from).collect();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(output)?);
    let mut rec = csv::StringRecord::new();
    while r.read_record(&mut rec)? {
        let obj: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(rec.iter())
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
            .collect();
        serde_json::to_writer(&mut w, &obj)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

const BENCH_CONTRACT: &str = r#"{
  "ref": { "handle": "bench", "name": "clicks", "version": "1.0.0" },
  "keyField": "SessionId",
  "piiFields": { "UserId": 1, "Email": 2, "UserName": 2 }
}"#;

const BENCH_JOB: &str = r#"{
  "source_data": { "data_connector_ref": { "name": "bench" }, "path_prefix": "data",
                   "file_name": "INPUT", "data_type": { "csv": {} } },
  "consent": { "default_consent_levels": [0],
               "consent_level_extractor": { "field": "Consent" } },
  "encryption": { "timestamp_config": { "field": "EventTime", "format": "yyyy-MM-dd HH:mm:ss",
                                        "default_time_zone": { "id": "UTC" } } },
  "event_contract_ref": { "handle": "bench", "name": "clicks", "version": "1.0.0" },
  "encrypted_data": { "target": { "data_connector_ref": { "name": "bench" },
                                  "path_prefix": "out", "file_name": "encrypted.csv" } },
  "encryption_keys_data": { "target": { "data_connector_ref": { "name": "bench" },
                                        "path_prefix": "out", "file_name": "keys.csv" } }
}"#;

const BENCH_DERIVED: &str = r#""derived_data": [
    { "target": { "data_connector_ref": { "name": "bench" }, "path_prefix": "out",
                  "file_name": "d-analytics.csv" }, "consent_levels": [1] },
    { "target": { "data_connector_ref": { "name": "bench" }, "path_prefix": "out",
                  "file_name": "d-marketing.csv" }, "consent_levels": [2],
      "consent_level_type": "CUMULATIVE" },
    { "target": { "data_connector_ref": { "name": "bench" }, "path_prefix": "out",
                  "file_name": "d-masked.csv" }, "consent_levels": [1],
      "masked_fields": { "seed": "bench-seed", "field_patterns":
        { "bench/clicks/1.0.0": { "field_patterns": ["UserId", "Email"] } } } } ],
  "encryption_keys_data""#;

const BENCH_CONFIG: &str = "connectors:\n  bench: { type: local, root: . }\n\
contracts: ./contracts\nkey_store: { type: embedded, path: ./keys.db }\n";
