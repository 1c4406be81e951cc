//! `riteraft`: the command-line client of a RiteRaft cluster. All the work is in [`cli`].

mod cli;

/// mimalloc rather than glibc malloc: the bench's gRPC calls allocate many small buffers on
/// one thread and free them on another, where glibc's arenas cost several percent of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
