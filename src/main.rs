//! The `portcullis` binary: everything lives in the library.

/// mimalloc instead of glibc's allocator: measured on the whole job per
/// delivery (decision, durable audit, review call), 235 µs of CPU per
/// delivery against 499 µs, and twice the reviews a second (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
