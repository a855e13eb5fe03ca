//! The `keylink` binary: everything lives in the library so that a third party can build a binary
//! with extra connectors (`use their_connector as _; fn main() { keylink::main() }`).

fn main() {
    tune_malloc();
    keylink::main()
}

/// glibc's malloc, tuned for the engine's pattern: batch buffers of about a megabyte, allocated on
/// one thread and freed on another, again and again (`cargo xtask bench`, 1M rows):
///
/// - Threads that allocate at the same time get arenas of their own (up to 8 per core), and each
///   keeps memory it rarely returns. Two arenas kept peak RSS ~25 MB lower at the same speed.
/// - Buffers over the (dynamic) mmap threshold are mapped and unmapped per batch, and memory at
///   the top of the heap is trimmed back to the kernel: every batch faulted its pages in again
///   (80k minor faults, ~0.1 s of system time). With a 32 MiB mmap threshold and a 128 MiB trim
///   threshold the freed buffers are reused: 28k faults, peak RSS within a few MB.
///
/// - What stays free is returned to the kernel once a second (`malloc_trim`, which also releases
///   free pages inside the heap): the embedded key store's folds need ~20 MB for a second or two,
///   and with the thresholds above that memory stayed, fragmented, for the rest of the run. At
///   10M rows (four folds) peak RSS fell from 132 to 103–124 MB; at 1M (no fold), time and peak
///   RSS are the same.
///
/// `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` in
/// the environment win (the trimming runs whatever they say).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    let set = |name: &str| {
        std::env::var_os(name).is_some() || std::env::var_os("GLIBC_TUNABLES").is_some()
    };
    // SAFETY: mallopt only tunes the allocator, and runs before any other thread exists.
    unsafe {
        if !set("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        if !set("MALLOC_MMAP_THRESHOLD_") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
        if !set("MALLOC_TRIM_THRESHOLD_") {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        }
    }
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                // SAFETY: malloc_trim only returns free memory to the kernel.
                unsafe { libc::malloc_trim(0) };
            }
        })
        .expect("spawn the malloc-trim thread");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
