//! Compiling modules runs below the priority of everything else in the node. Cranelift keeps
//! every core busy for seconds on a large module (tens of seconds for an 18 MB Python store on
//! a debug build), and on a small machine a deploy has every node compiling at once: at the
//! same priority the consensus loop waits its turn behind the compiler's threads, heartbeats
//! are late, and writes pause. A lowered priority changes only who goes first, never what is
//! computed, so replicas stay identical.

/// The niceness of compiling threads: 10 gives them about a tenth of a core's time when the
/// node's own threads (at 0) want it, and every core when they do not.
const COMPILE_NICENESS: i32 = 10;

/// Lowers the priority of the calling thread (Linux, where niceness is per thread; elsewhere
/// nothing). Failing to is not worth stopping for: it only costs latency during compiles.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(thread), COMPILE_NICENESS) {
            tracing::debug!("cannot lower a compiling thread's priority: {e}");
        }
    }
}

/// Makes the threads wasmtime compiles on (rayon's global pool) start at a lowered priority.
/// Once per process, before the first compile; later calls do nothing (the pool exists).
pub fn lower_compile_threads() {
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|index| format!("riteraft-compile-{index}"))
        .start_handler(|_| lower_this_thread())
        .build_global();
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_runs_at_the_compile_niceness() {
        std::thread::spawn(|| {
            lower_this_thread();
            let thread = rustix::thread::gettid();
            let niceness = rustix::process::getpriority_process(Some(thread)).unwrap();
            assert_eq!(niceness, COMPILE_NICENESS);
        })
        .join()
        .unwrap();
    }
}
