//! The `keylink` binary as shipped: its allocator (src/main.rs), and a whole job on it.

/// jemalloc runs with keylink's options. They are a symbol jemalloc reads at start; if it stopped
/// matching (a renamed symbol, another prefix), jemalloc would fall back to its defaults without
/// a word, and a job's peak memory would rise by half.
#[cfg(all(unix, feature = "jemalloc"))]
#[test]
fn jemalloc_runs_with_keylinks_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keylink"))
        .arg("--version")
        // printed at exit, with the options in force
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run keylink");
    assert!(out.status.success(), "keylink --version failed: {out:?}");
    let stats = String::from_utf8_lossy(&out.stderr);
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keylink"))
        .args(["demo", "--rows", "20000", "demo"])
        .current_dir(dir.path())
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run keylink demo");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "keylink demo failed:\n{stdout}\n{stderr}"
    );
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
