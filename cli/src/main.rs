//! `riteraft`: the command-line client of a RiteRaft cluster. The commands and their arguments
//! are in [`commands`], how answers look in [`render`], the load generator in [`bench`],
//! `riteraft new` in [`new_project`].

mod bench;
mod commands;
mod new_project;
mod render;

/// mimalloc rather than glibc malloc: the bench's gRPC calls allocate many small buffers on
/// one thread and free them on another, where glibc's arenas cost several percent of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    commands::main()
}
