//! The `keylink` binary's allocator (src/main.rs).

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
