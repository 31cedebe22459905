//! The `msloss` command-line tool (see the library, `msloss_cli`).

// mimalloc rather than the system allocator: it keeps freed memory for reuse within the process
// and maps large allocations in big pieces, so the segmenter's planes and buffers cost few page
// faults (see BENCHMARKS.md, segmentation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    msloss_cli::run()
}
