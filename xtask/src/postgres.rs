//! A throw-away PostgreSQL 15 server for the tests of the Postgres key store (Debian's
//! `postgresql` package, installed with apt-get when missing): a fresh `initdb` under
//! `target/services/pg`, owned by the `postgres` user (the server refuses to run as root), on a
//! free loopback port, stopped by the PID in its `postmaster.pid`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Where Debian's PostgreSQL 15 binaries live.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The variable the tests read: a superuser URL of the test server.
pub const URL_ENV: &str = "KEYLINK_TEST_POSTGRES_URL";

/// A running test server; dropping it stops it.
pub struct PostgresServer {
    dir: PathBuf,
    port: u16,
    pid: Option<u32>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command run as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Installs Debian's `postgresql` when its binaries are missing.
pub fn install() -> Result<()> {
    if Path::new(BIN).join("postgres").exists() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "PostgreSQL 15 is not installed ({BIN}): run `apt-get install -y postgresql` as root"
        );
    }
    crate::run(Command::new("apt-get").arg("update"))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "postgresql"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing PostgreSQL with apt-get")?;
    if !Path::new(BIN).join("postgres").exists() {
        bail!("apt-get installed postgresql, but {BIN}/postgres is missing (not version 15?)");
    }
    Ok(())
}

/// The PID in `dir/postmaster.pid`, if a server runs there.
fn running_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

impl PostgresServer {
    /// Installs if needed, makes a fresh cluster in `dir` and starts it on a free port.
    pub fn start(dir: &Path) -> Result<Self> {
        install()?;
        let bin = Path::new(BIN);
        // A server left by an interrupted run: stop it (pg_ctl signals the PID in its pid file).
        if let Some(pid) = running_pid(dir) {
            eprintln!("xtask: stopping a PostgreSQL server left running (pid {pid})");
            let _ = crate::run(
                as_postgres(&bin.join("pg_ctl"))
                    .args(["stop", "-m", "immediate", "-w", "-D"])
                    .arg(dir),
            );
        }
        crate::remove_dir(dir)?;
        std::fs::create_dir_all(dir)?;
        if is_root() {
            crate::run(Command::new("chown").args(["postgres:postgres"]).arg(dir))?;
        }
        let started = Instant::now();
        crate::run(
            as_postgres(&bin.join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "-D",
                ])
                .arg(dir)
                .stdout(std::process::Stdio::null()),
        )
        .context("initdb")?;
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            dir.display()
        );
        crate::run(
            as_postgres(&bin.join("pg_ctl"))
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(dir)
                .arg("-l")
                .arg(dir.join("log"))
                .args(["-o", &options])
                .stdout(std::process::Stdio::null()),
        )
        .with_context(|| format!("starting PostgreSQL; see {}", dir.join("log").display()))?;
        let pid = running_pid(dir);
        eprintln!(
            "xtask: PostgreSQL 15 (pid {}) ready on 127.0.0.1:{port} in {:.1} s",
            pid.unwrap_or(0),
            started.elapsed().as_secs_f64()
        );
        Ok(PostgresServer {
            dir: dir.to_path_buf(),
            port,
            pid,
        })
    }

    /// The environment the tests read.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![(
            URL_ENV,
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
        )]
    }

    /// Stops the server.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SIGINT to the postmaster: "fast" shutdown.
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            while running_pid(&self.dir).is_some() && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            eprintln!("xtask: PostgreSQL (pid {pid}) stopped");
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `cargo xtask postgres start|stop`: a server for running the Postgres tests by hand.
pub fn command(args: &[&str], dir: &Path) -> Result<()> {
    match args.first().copied() {
        Some("start") => {
            let server = PostgresServer::start(dir)?;
            for (k, v) in server.env() {
                println!("export {k}={v}");
            }
            // Keep it running: forget the handle (stop it with `cargo xtask postgres stop`).
            std::mem::forget(server);
            Ok(())
        }
        Some("stop") => {
            match running_pid(dir) {
                Some(pid) => {
                    let mut s = PostgresServer {
                        dir: dir.to_path_buf(),
                        port: 0,
                        pid: Some(pid),
                    };
                    s.kill();
                }
                None => eprintln!("xtask: no PostgreSQL server runs in {}", dir.display()),
            }
            Ok(())
        }
        _ => bail!("usage: cargo xtask postgres start|stop"),
    }
}

/// `cargo xtask bench --key-store postgres`: the encrypt job of the benchmark (`dir`, already
/// written by `bench`) once more with the Postgres key store on a fresh local server; prints
/// rows/s and key creations/s next to the embedded store's run (`embedded`).
pub fn bench(
    dir: &Path,
    release: &Path,
    rows: u64,
    embedded: &crate::Measured,
    embedded_keys: u64,
) -> Result<()> {
    let server = PostgresServer::start(&crate::target_dir().join("services/pg-bench"))?;
    let psql = |db: &str, sql: &str| -> Result<String> {
        let out = as_postgres(&Path::new(BIN).join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-tAc", sql])
            .output()
            .context("psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    std::fs::write(
        dir.join("bench-master-key"),
        "bGtsa2xrbGtsa2xrbGtsa2xrbGtsa2xrbGtsa2xrbGs=\n",
    )?;
    // a fresh database per run: every run creates all of its keys
    let config_for = |db: &str| -> Result<PathBuf> {
        psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))?;
        psql("postgres", &format!("CREATE DATABASE {db}"))?;
        let file = dir.join(format!("keylink-{db}.yaml"));
        std::fs::write(
            &file,
            format!(
                "connectors:\n  bench: {{ type: local, root: . }}\ncontracts: ./contracts\n\
                 key_store: {{ type: postgres, url: \"postgres://postgres@127.0.0.1:{}/{db}\", \
                 master_key_file: bench-master-key }}\n",
                server.port
            ),
        )?;
        Ok(file)
    };
    let count_keys =
        |db: &str| -> Result<u64> { Ok(psql(db, "SELECT count(*) FROM keylink_keys")?.parse()?) };

    let config = config_for("bench_one")?;
    // like the embedded runs (bench.rs), into outputs that do not exist yet
    crate::remove_dir(&dir.join("out"))?;
    let pg = crate::measure(
        Command::new(release.join("keylink"))
            .args(["run", "--no-progress", "--json", "--config"])
            .arg(&config)
            .arg(dir.join("job.json")),
    )?;
    let mut table = vec![
        (
            "embedded (SQLite)".to_string(),
            embedded.clone(),
            embedded_keys,
        ),
        (
            "postgres, 1 worker".to_string(),
            pg.clone(),
            count_keys("bench_one")?,
        ),
    ];

    // sharded: the input cut into 8 objects, N workers at once (`--shard I/N`) on one store
    let shards_dir = dir.join(format!("shards/{rows}"));
    split_csv(&dir.join(format!("data/clicks-{rows}.csv")), &shards_dir, 8)?;
    // job-sharded.json (bench.rs): shards/<rows>/*.csv, key group `bench`, outputs in out-sharded/
    for n in [1u32, 2, 4] {
        let db = format!("bench_shards_{n}");
        let config = config_for(&db)?;
        let mut script = String::new();
        for i in 0..n {
            script.push_str(&format!(
                "\"$0\" run --no-progress --json --shard {i}/{n} --config '{}' '{}' >/dev/null & ",
                config.display(),
                dir.join("job-sharded.json").display()
            ));
        }
        // the worst exit code of the workers (1: rows rejected, 2: failed — measure refuses it)
        script.push_str(
            "rc=0; for j in $(jobs -p); do wait $j; c=$?; [ $c -gt $rc ] && rc=$c; done; exit $rc",
        );
        let m = crate::measure(
            Command::new("bash")
                .arg("-c")
                .arg(&script)
                .arg(release.join("keylink")),
        )?;
        let _ = std::fs::remove_dir_all(dir.join("out-sharded"));
        table.push((
            format!(
                "postgres, {n} shard{} at once",
                if n > 1 { "s" } else { "" }
            ),
            m,
            count_keys(&db)?,
        ));
    }
    server.stop();
    println!(
        "{:<28} {:>8} {:>12} {:>14} {:>12}",
        "key store (encrypt job)", "seconds", "rows/s", "keys created/s", "peak RSS MB"
    );
    for (name, m, k) in &table {
        println!(
            "{:<28} {:>8.2} {:>12.0} {:>14.0} {:>12.1}",
            name,
            m.seconds,
            rows as f64 / m.seconds,
            *k as f64 / m.seconds,
            m.max_rss_kb as f64 / 1024.0
        );
    }
    println!(
        "postgres / embedded time: {:.2}x (target: at most 1.5x); peak RSS of sharded runs is \
         the largest worker's",
        pg.seconds / embedded.seconds
    );
    Ok(())
}

/// Cuts a CSV (one record per line, as the bench generates) into `parts` objects of
/// contiguous rows, each with the header; done once.
fn split_csv(input: &Path, out: &Path, parts: usize) -> Result<()> {
    use std::io::{BufRead, BufWriter, Write};
    if out.join(format!("part-{:02}.csv", parts - 1)).exists() {
        return Ok(());
    }
    std::fs::create_dir_all(out)?;
    let lines = std::io::BufReader::new(std::fs::File::open(input)?)
        .lines()
        .count()
        .saturating_sub(1);
    let mut reader = std::io::BufReader::new(std::fs::File::open(input)?).lines();
    let header = reader.next().context("an empty bench input")??;
    let per = lines.div_ceil(parts);
    for p in 0..parts {
        let mut w = BufWriter::new(std::fs::File::create(out.join(format!("part-{p:02}.csv")))?);
        writeln!(w, "{header}")?;
        for line in reader.by_ref().take(per) {
            writeln!(w, "{}", line?)?;
        }
        w.flush()?;
    }
    Ok(())
}
