//! keylink's automation, in Rust (no Makefiles, no shell glue).
//!
//! ```text
//! cargo xtask test [--no-lint]   everything CI runs: setup, fmt, clippy, the API docs, the
//!                                whole test suite, the minimal feature build
//! cargo xtask setup              install what the tests need under target/emulators
//!                                (a Python virtualenv with Google's `tink`, to check our
//!                                ciphertexts with an independent implementation, and the
//!                                S3 and GCS emulators)
//! cargo xtask bench [--rows N]   throughput and peak memory of `keylink run` on a generated CSV,
//!                   [--big]      next to a plain csv-crate copy of the same file;
//!                   [--key-store postgres]  and the encrypt job on a local PostgreSQL key store
//! cargo xtask schemas           regenerate schemas/*.schema.json (`keylink schema …` of the
//!                                default build; a test fails when they are stale)
//! cargo xtask csv-copy IN OUT    the baseline: read and write every record with the csv crate
//! cargo xtask emulators start|status|stop   the S3 (moto) and GCS (fake-gcs-server) emulators
//!                                for running tests by hand
//! cargo xtask bench s3 [--mib N] a 1 GiB object copy through the S3 connector vs boto3
//! cargo xtask bench gcs [--mib N] the same through the GCS connector vs Google's Python client
//! cargo xtask postgres start|stop   a PostgreSQL server for the key-store tests, by hand
//! cargo xtask azurite start|status|stop      an Azure emulator (Azurite) for running tests by hand
//! cargo xtask bench azure [--mib N]          a 1 GiB blob copy through the Azure connector vs
//!                                            Microsoft's Python client
//! cargo xtask kafka start|status|stop        a Kafka broker (tansu) for the stream tests, by hand
//! cargo xtask bench stream [--requests N] [--singles S] [--concurrency C] [--batch K]
//!                                            the HTTP gateway's events/s and ack latency on tansu,
//!                                            next to a plain rdkafka producer
//! ```

#![allow(clippy::disallowed_macros)] // printing is what a build tool does

mod azure;
mod bench;
mod bench_stream;
mod copy_bench;
mod emulators;
mod gcs;
mod kafka;
mod postgres;
mod schemas;
mod service;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Pinned: the independent Tink implementation our crypto is checked against.
const TINK_VERSION: &str = "1.16.1";
/// Pinned: the independent JSON Schema validator the committed schemas are checked with
/// (tests/python/validate_schemas.py).
const JSONSCHEMA_VERSION: &str = "4.26.0";
/// Pinned with it: the YAML parser that reads the YAML examples it validates.
const PYYAML_VERSION: &str = "6.0.4";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&rest),
        Some("setup") => setup().map(|_| ()),
        Some("schemas") => schemas::write(),
        Some("bench") if rest.first() == Some(&"s3") => emulators::bench_s3(&rest[1..]),
        Some("bench") if rest.first() == Some(&"gcs") => gcs::bench(&rest[1..]),
        Some("bench") if rest.first() == Some(&"azure") => azure::bench(&rest[1..]),
        Some("bench") if rest.first() == Some(&"stream") => bench_stream::bench(&rest[1..]),
        Some("bench") => bench::bench(&rest),
        Some("azurite") => azure::command(&rest, &target_dir().join("emulators")),
        Some("emulators") => emulators::command(&rest, &target_dir().join("emulators")),
        Some("kafka") => kafka::command(&rest, &target_dir().join("emulators")),
        Some("postgres") => postgres::command(&rest, &target_dir().join("services/pg")),
        Some("csv-copy") => match rest.as_slice() {
            [input, output] => csv_copy(Path::new(input), Path::new(output)).map(|_| ()),
            _ => bail!("usage: cargo xtask csv-copy IN OUT"),
        },
        _ => {
            eprintln!(
                "usage: cargo xtask <test [--no-lint] | setup | schemas | bench [--rows N] [--big] [--key-store postgres] | bench s3|gcs|azure [--mib N] | bench stream [--requests N] [--singles S] [--concurrency C] [--batch K] | csv-copy IN OUT | emulators start|status|stop | azurite start|status|stop | kafka start|status|stop | postgres start|stop>"
            );
            std::process::exit(2)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Removes `dir` and everything in it, if it is there.
fn remove_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `pip install SPEC` into `venv` unless its marker file (`.keylink-MARKER`) says it is there;
/// creates the virtualenv first if it does not exist. `what` names it in errors.
fn pip_install_once(venv: &Path, marker: &str, spec: &str, what: &str) -> Result<()> {
    let marker = venv.join(format!(".keylink-{marker}"));
    if marker.exists() {
        return Ok(());
    }
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))
            .context("creating a Python virtualenv (is python3 with venv installed?)")?;
    }
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        spec,
    ]))
    .with_context(|| format!("installing {what} from PyPI"))?;
    std::fs::write(&marker, "")?;
    Ok(())
}

/// The test tools' environment: variables the tests read.
struct TestEnv {
    python: PathBuf,
}

/// Installs the test tools (idempotent): a virtualenv under target/emulators with tink pinned.
fn setup() -> Result<TestEnv> {
    let dir = target_dir().join("emulators");
    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    let marker = venv.join(format!(
        ".keylink-tink-{TINK_VERSION}-jsonschema-{JSONSCHEMA_VERSION}-pyyaml-{PYYAML_VERSION}"
    ));
    if !marker.exists() {
        std::fs::create_dir_all(&dir)?;
        if !python.exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
                .context("creating the Python virtualenv (is python3 with venv installed?)")?;
        }
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("tink=={TINK_VERSION}"),
            &format!("jsonschema=={JSONSCHEMA_VERSION}"),
            &format!("PyYAML=={PYYAML_VERSION}"),
        ]))
        .context("installing tink, jsonschema and PyYAML from PyPI")?;
        std::fs::write(&marker, "")?;
    }
    // readiness: tink imports
    run(Command::new(&python).args([
        "-c",
        "import tink; from tink import daead; daead.register(); import jsonschema, yaml",
    ]))
    .context("tink, jsonschema or PyYAML is installed but does not import")?;
    emulators::install(&venv)?;
    gcs::install(&venv)?;
    azure::install(&dir)?;
    kafka::install(&venv)?;
    Ok(TestEnv { python })
}

fn test(args: &[&str]) -> Result<()> {
    let lint = !args.contains(&"--no-lint");
    let started = Instant::now();
    let env = setup()?;
    if lint {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]))?;
        // the API docs a third party writes a plug-in from: no broken or private links
        run(cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings"))?;
    }
    // the emulators run for the test run only; dropping them (also on failure) stops them
    let venv = target_dir().join("emulators/venv");
    let s3 = emulators::S3Emulator::start(&venv)?;
    let gcs = gcs::GcsEmulator::start(&venv)?;
    let pg = postgres::PostgresServer::start(&target_dir().join("services/pg"))?;
    let azurite = azure::AzureEmulator::start(&target_dir().join("emulators"))?;
    let kafka = kafka::KafkaBroker::start(&venv)?;
    run(cargo()
        .args(["test", "--workspace", "--all-features"])
        .env("KEYLINK_TEST_PYTHON", &env.python)
        .envs(s3.env())
        .envs(gcs.env())
        .envs(azurite.env())
        .envs(kafka.env())
        .envs(pg.env()))?;
    pg.stop();
    s3.stop();
    gcs.stop();
    azurite.stop();
    kafka.stop();
    // the minimal binary must build: one connector, one format
    run(cargo().args([
        "build",
        "-p",
        "keylink",
        "--no-default-features",
        "--features",
        "local,csv",
    ]))?;
    eprintln!(
        "xtask: all tests passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Clone)]
struct Measured {
    seconds: f64,
    max_rss_kb: u64,
}

/// Runs a command and measures wall time and the child's peak RSS (via Python's
/// `resource.getrusage(RUSAGE_CHILDREN)`, which is `wait4` without needing libc here).
///
/// Everything written before is flushed to the disk first (`sync`, not timed), so that a run
/// does not pay for the writeback of the one before it: keylink syncs its outputs, the copies do
/// not. At 10M rows A p2, run right after A p1's 3.8 GB, took 31 s against A p1's 24 s (by
/// hand, back to back: 27-28 and 29 s); with the sync, 28.6 and 29.1 s.
fn measure(cmd: &mut Command) -> Result<Measured> {
    let argv: Vec<String> = std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    let script = "import json,os,resource,subprocess,sys,time\n\
os.sync()\n\
t=time.perf_counter()\n\
r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL)\n\
d=time.perf_counter()-t\n\
print(json.dumps({'code':r.returncode,'seconds':d,'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))";
    eprintln!("xtask: measuring {}", argv.join(" "));
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&argv)
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("python3 is needed to measure peak memory")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> Result<f64> {
        let i = text
            .find(&format!("\"{k}\": "))
            .context("bad measure output")?
            + k.len()
            + 4;
        let rest = &text[i..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Ok(rest[..end].trim().parse()?)
    };
    let code = field("code")? as i32;
    if code != 0 && code != 1 {
        bail!("{} exited with {code}", argv.join(" "));
    }
    Ok(Measured {
        seconds: field("seconds")?,
        max_rss_kb: field("rss")? as u64,
    })
}

/// The baseline: a plain csv-crate copy (ByteRecord read → write), like `xsv cat`.
fn csv_copy(input: &Path, output: &Path) -> Result<u64> {
    if let Some(p) = output.parent() {
        std::fs::create_dir_all(p)?;
    }
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(input)?;
    let mut w = csv::Writer::from_path(output)?;
    let mut rec = csv::ByteRecord::new();
    let mut n = 0;
    while r.read_byte_record(&mut rec)? {
        w.write_byte_record(&rec)?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}

/// Writes `rows` synthetic clickstream rows (~220 bytes each, 3 PII fields).
fn generate_csv(path: &Path, rows: u64) -> Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        w,
        "SessionId,UserId,Email,UserName,Country,Page,Referrer,UserAgent,EventTime,Consent,Amount"
    )?;
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    const UA: [&str; 3] = [
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        "Mozilla/5.0 (Macintosh) Safari/605.1.15",
        // a quoted field with a delimiter and escaped quotes, as real exports have
        "\"Mozilla/5.0 (Windows NT 10.0, Win64) \"\"Edge\"\"/126\"",
    ];
    let mut session = 0u64;
    let mut left = 0u64;
    let mut user = 0u64;
    let base: i64 = 1_711_929_600; // 2024-04-01T00:00:00Z
    for i in 0..rows {
        if left == 0 {
            session = next();
            user = next() % 200_000;
            left = 1 + next() % 20;
        }
        left -= 1;
        let t = base + (i as i64 * 86_400 * 3 / rows.max(1) as i64);
        let (d, secs) = (t / 86_400, t % 86_400);
        // days since 2024-04-01
        let day = 1 + (d - base / 86_400);
        writeln!(
            w,
            "{session:016x},cust-{user:06},user{user}@example.com,User Number {user},NL,/products/{},https://search.example.com/?q=item{},{},2024-04-{day:02} {:02}:{:02}:{:02},{},{}.{:02}",
            next() % 5000,
            next() % 1000,
            UA[(next() % 3) as usize],
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            next() % 3,
            next() % 500,
            next() % 100
        )?;
    }
    w.flush()?;
    Ok(())
}
