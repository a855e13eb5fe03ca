//! The `keylink` binary: everything lives in the library so that a third party can build a binary
//! with extra connectors (`use their_connector as _; fn main() { keylink::main() }`).

fn main() {
    tune_malloc();
    keylink::main()
}

/// jemalloc for Rust's allocations; the C libraries (SQLite among them) keep the system's malloc,
/// tuned below. The engine allocates batch buffers of about a megabyte on one thread and frees
/// them on another, again and again: glibc's malloc, even tuned, kept more of that memory, and
/// more the longer a job ran. Peak RSS (`cargo xtask bench`'s jobs; 1M rows: medians of 5 runs,
/// interleaved; 10M: one run each):
///
/// | job | glibc, 1M rows | jemalloc, 1M | glibc, 10M | jemalloc, 10M |
/// |---|---:|---:|---:|---:|
/// | A `--parallelism 1` | 73 MB | 66 MB | 93 MB (+29 %) | 74 MB (+12 %) |
/// | A `--parallelism 2` | 81 MB | 70 MB | 93 MB (+15 %) | 78 MB (+11 %) |
/// | B | 87 MB | 78 MB | 101 MB (+17 %) | 86 MB (+10 %) |
///
/// Wall and CPU time were the same. One arena (each thread's cache serves small allocations
/// without a lock; a batch takes a few large ones), and freed pages go back to the kernel after
/// 100 ms: with jemalloc's defaults (4 arenas per core, freed pages kept for 10 s), A's peak RSS
/// was ~119 MB at 1M rows. `_RJEM_MALLOC_CONF` in the environment wins.
#[cfg(all(unix, feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options ([`ALLOCATOR`]), read when it starts: a C string.
#[cfg(all(unix, feature = "jemalloc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 46] = b"narenas:1,dirty_decay_ms:100,muzzy_decay_ms:0\0";

/// glibc's malloc, tuned for the engine's pattern: batch buffers of about a megabyte, allocated on
/// one thread and freed on another, again and again (`cargo xtask bench`, 1M rows). With the
/// `jemalloc` feature (the default), Rust's allocations go to jemalloc ([`ALLOCATOR`]) and this
/// tunes the malloc of the C libraries: the embedded key store's folds (below) are SQLite's.
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
