//! `riteraft`: the command-line client of a RiteRaft cluster. All the work is in [`cli`].

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
