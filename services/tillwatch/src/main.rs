fn main() -> std::process::ExitCode {
    tune_allocator();
    tillwatch::run_cli()
}

/// glibc's malloc raises its mmap threshold every time a large block is
/// freed, so after a while the multi-megabyte buffers of each flush (Arrow
/// columns, encoded Parquet) come from the heap arenas instead, and every
/// worker thread's arena keeps the pages it freed: a long-running gateway's
/// resident memory creeps up with no live data behind it. A fixed threshold
/// sends those buffers back to mmap (returned on free), and a few arenas
/// are enough for a process that does its heavy work on a handful of
/// threads. An operator's own glibc tunables win.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    let set_by_operator = [
        "GLIBC_TUNABLES",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_ARENA_MAX",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some());
    if set_by_operator {
        return;
    }
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
