//! [`with_heartbeats`]: runs a long piece of work on the consensus thread while a thread of its
//! own sends the same heartbeats every interval, on a leader's behalf (see
//! `Node::gather_store`, the one user).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use raft::prelude::Message;

use super::SideSender;

/// Runs `work` here and returns what it returns; meanwhile, every `interval` until it is done,
/// hands each of `heartbeats` to `send`. Returns as soon as `work` does, whenever that is: the
/// pump is told to stop, and never sleeps through a stop it was told before it began waiting.
pub(super) fn with_heartbeats<T>(
    heartbeats: &[Message],
    send: &SideSender,
    interval: Duration,
    work: impl FnOnce() -> T,
) -> T {
    let done = (Mutex::new(false), Condvar::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let (lock, wake) = &done;
            let mut finished = lock.lock().expect("heartbeat pump lock");
            // `finished` is checked before every wait: the work may end before this thread
            // first takes the lock, and its notification is then long gone.
            while !*finished {
                let (guard, waited) =
                    (wake.wait_timeout(finished, interval)).expect("heartbeat pump lock");
                finished = guard;
                if waited.timed_out() && !*finished {
                    for heartbeat in heartbeats {
                        send(heartbeat.clone());
                    }
                }
            }
        });
        let result = work();
        *done.0.lock().expect("heartbeat pump lock") = true;
        done.1.notify_all();
        result
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    fn counting_sender() -> (SideSender, Arc<AtomicUsize>) {
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let send: SideSender = Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            true
        });
        (send, sent)
    }

    #[test]
    fn quick_work_does_not_wait_for_the_interval() {
        // A pump that slept through its stop held the loop for the whole interval: 200 ms (the
        // heartbeat interval) on every small snapshot a leader took.
        let (send, sent) = counting_sender();
        let interval = Duration::from_secs(2);
        for _ in 0..5 {
            let started = Instant::now();
            let answer = with_heartbeats(&[Message::default()], &send, interval, || 42);
            assert_eq!(answer, 42);
            assert!(started.elapsed() < interval / 2, "the pump overslept");
        }
        assert_eq!(sent.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn long_work_gets_a_heartbeat_every_interval() {
        let (send, sent) = counting_sender();
        let two = [Message::default(), Message::default()];
        with_heartbeats(&two, &send, Duration::from_millis(10), || {
            // Wait for the heartbeats themselves, not for a guess at how long they take.
            let deadline = Instant::now() + Duration::from_secs(60);
            while sent.load(Ordering::SeqCst) < 6 {
                assert!(Instant::now() < deadline, "no heartbeats in 60 s");
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let after = sent.load(Ordering::SeqCst);
        assert_eq!(after % 2, 0, "each round sends every heartbeat");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            sent.load(Ordering::SeqCst),
            after,
            "none once the work is done"
        );
    }
}
