//! The `keylink` binary as shipped: its allocator (src/main.rs), and a whole job on it.

/// Runs the shipped `keylink` with `args` in `dir`, with jemalloc printing its statistics
/// (options in force included) to stderr at exit.
#[cfg(all(unix, feature = "jemalloc"))]
fn keylink_with_jemalloc_stats(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keylink"))
        .args(args)
        .current_dir(dir)
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run keylink");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// jemalloc runs with keylink's options. They are a symbol jemalloc reads at start; if it stopped
/// matching (a renamed symbol, another prefix), jemalloc would fall back to its defaults without
/// a word, and a job's peak memory would rise by half.
#[cfg(all(unix, feature = "jemalloc"))]
#[test]
fn jemalloc_runs_with_keylinks_options() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (ok, stdout, stats) = keylink_with_jemalloc_stats(&["--version"], dir.path());
    assert!(ok, "keylink --version failed:\n{stdout}\n{stats}");
    for option in [
        "opt.narenas: 1\n",
        "opt.dirty_decay_ms: 100 ",
        "opt.muzzy_decay_ms: 0 ",
    ] {
        assert!(
            stats.contains(option),
            "jemalloc's statistics lack `{}`:\n{stats}",
            option.trim()
        );
    }
}

/// The binary as shipped (on jemalloc; the end-to-end tests run a build of the library on the
/// system's allocator) runs a whole job: the demo, at a size where its data once went wrong.
#[cfg(all(unix, feature = "jemalloc"))]
#[test]
fn the_shipped_binary_runs_the_demo_on_jemalloc() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (ok, stdout, stderr) =
        keylink_with_jemalloc_stats(&["demo", "--rows", "20000", "demo"], dir.path());
    assert!(ok, "keylink demo failed:\n{stdout}\n{stderr}");
    // the two deliberate rejects, and no other
    assert!(
        stdout.contains("20,002 records read, 20,000 accepted, 2 rejected"),
        "{stdout}"
    );
    assert!(
        stderr.contains("opt.narenas: 1\n"),
        "not on jemalloc:\n{stderr}"
    );
}
