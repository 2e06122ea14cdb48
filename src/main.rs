//! The `portcullis` binary: everything lives in the library.

/// jemalloc instead of glibc's allocator: on the whole job per delivery
/// (decision, durable audit, review call) it halves the CPU time and doubles
/// the reviews a second, at the same idle and pending memory (BENCHMARKS.md).
#[cfg(all(not(fuzzing), not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
