//! The `keylink` binary: everything lives in the library so that a third party can build a binary
//! with extra connectors (`use their_connector as _; fn main() { keylink::main() }`).

fn main() {
    limit_malloc_arenas();
    keylink::main()
}

/// glibc's malloc gives threads that allocate at the same time arenas of their own (up to 8 per
/// core), and the engine's batch buffers, allocated on one thread and freed on another, leave
/// each arena holding memory it rarely returns. Two arenas kept peak RSS of a 1M-row job ~25 MB
/// lower at the same speed (`cargo xtask bench`). `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only tunes the allocator, and runs before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
