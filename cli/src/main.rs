//! The `msloss` command-line tool (see the library, `msloss_cli`).

// mimalloc rather than the system allocator: it keeps freed memory for reuse within the process
// and maps large allocations in big pieces, so the segmenter's planes and buffers cost few page
// faults (see BENCHMARKS.md, segmentation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // The main thread joins rayon's pool as one of its workers: a parallel step it starts (the
    // segmenter runs dozens a second) runs on it and the other workers, rather than being handed
    // to them while it sleeps. If the pool cannot be built so, rayon builds its default later.
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
    msloss_cli::run()
}
