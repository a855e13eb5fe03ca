//! What the connectors' copy benchmarks (`cargo xtask bench s3|gcs|azure`) share: their one
//! option, building the connector's copy example, measuring a program against the emulator, and
//! the table they print.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Measured;

/// `--mib N`, the size of the object copied (default 1 GiB), from the options of
/// `cargo xtask bench <store>`.
pub fn mib_option(args: &[&str], store: &str) -> Result<u64> {
    let mut mib: u64 = 1024;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--mib" => {
                mib = it
                    .next()
                    .context("--mib needs a number")?
                    .parse()
                    .context("--mib needs a number")?
            }
            other => bail!("unknown bench {store} option {other}"),
        }
    }
    Ok(mib)
}

/// Builds `package`'s example `example` in release mode; returns the binary.
pub fn build_example(package: &str, example: &str) -> Result<PathBuf> {
    crate::run(crate::cargo().args(["build", "--release", "-p", package, "--example", example]))?;
    Ok(crate::target_dir().join("release/examples").join(example))
}

/// Measures `program args` with `env` set. [`crate::measure`] runs the bare argv (a child's
/// peak RSS is measured through Python), so the environment goes in front of it with env(1),
/// which execs the program in place.
pub fn measure_with(env: &[(&str, String)], program: &Path, args: &[&str]) -> Result<Measured> {
    let mut c = Command::new("env");
    c.args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(program)
        .args(args);
    crate::measure(&mut c)
}

/// One copy's runs as they count: the fastest time (the emulators' speed varies from run to
/// run) and the largest peak memory.
pub fn best(runs: &[Measured]) -> Measured {
    Measured {
        seconds: runs.iter().map(|m| m.seconds).fold(f64::INFINITY, f64::min),
        max_rss_kb: runs.iter().map(|m| m.max_rss_kb).max().unwrap_or(0),
    }
}

/// Prints `title`, then time, throughput and peak memory of each copy of `size` bytes.
pub fn print_table(title: &str, size: u64, rows: &[(String, &Measured)]) {
    let mb = size as f64 / 1e6;
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    println!("{title}");
    println!(
        "{:<width$} {:>8} {:>10} {:>12}",
        "", "seconds", "MB/s", "peak RSS MB"
    );
    for (name, m) in rows {
        println!(
            "{:<width$} {:>8.2} {:>10.1} {:>12.1}",
            name,
            m.seconds,
            mb / m.seconds,
            m.max_rss_kb as f64 / 1024.0
        );
    }
}
