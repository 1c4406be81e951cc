//! The retry policy, kept free of I/O so it can be tested on its own: in which order nodes are
//! tried, which failures move on to the next node, and how long to wait between passes.
//!
//! One call goes like this (see `Client::call`):
//! 1. One pass over the addresses, starting from the one that answered last.
//! 2. A node that cannot be reached (connection refused or timed out), or that answers
//!    `UNAVAILABLE` (no leader known), sends the call on to the next address: nothing was applied.
//! 3. If no node could even be reached during the first pass, the call fails at once with
//!    `NoNodeReachable`: waiting rarely helps, and the user learns quickly that the addresses or
//!    the nodes are wrong.
//! 4. Otherwise (some node is up but there is no leader: an election is running) the client
//!    sleeps and makes another pass, with a doubling backoff, up to [`MAX_PASSES`] passes, all
//!    within the call's timeout.
//! 5. `ABORTED` (the request was lost to a leader change and will never apply) is retried once,
//!    on the same node after a short pause; a second `ABORTED` is returned to the caller, since
//!    repeated leader changes mean something is wrong that retrying would hide.
//! 6. `DEADLINE_EXCEEDED` on a write is never retried: the write may still commit, and sending it
//!    again could apply it twice. On a read it only means that node could not reach the leader,
//!    so the next node is tried.
//! 7. A TLS failure (a node refused our certificate, or we refused its) means nothing was sent:
//!    the next node is tried, since one node's certificate may be wrong, but the client does not
//!    wait for such a node to change its mind. If no node answered otherwise by the end of the
//!    first pass, the call fails with the TLS error ([`ClientError::Tls`]), which says what to
//!    fix, rather than with "no node reachable".
//! 8. Anything else is the answer and is returned.

use std::error::Error as _;
use std::time::Duration;

use tonic::{Code, Status};

use crate::ClientError;

/// Passes over the whole address list before giving up on a cluster with no leader. With the
/// backoff below this is about 8.5 s of waiting, which covers a few election rounds (raft
/// elections take one to a few election timeouts, about a second each); the call's timeout
/// (10 s by default) usually ends the call first.
pub(crate) const MAX_PASSES: u32 = 12;

/// First pause between passes and before retrying an `ABORTED` request: long enough for a
/// candidate to win an election round on a local network, short enough not to be noticed.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(50);

/// Longest pause between passes: an election that takes longer than this is already slow, and
/// checking once a second keeps the added latency after it ends small.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a call may be sent twice without harm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads (query, status): sending them to another node after a timeout is harmless.
    Read,
    /// Writes (propose, join, leave, transfer): after a timeout or a broken connection they may
    /// still apply, so they are not sent again.
    Write,
}

/// What to do after one node failed a request.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The request never reached the node (connection refused, connect timeout): try the next.
    Unreachable(String),
    /// The node is up but cannot serve the request now (no leader, or for a read: cannot reach
    /// the leader): try the next, and back off after the pass.
    NotNow(String),
    /// Lost to a leader change, never applied: may be retried once.
    Aborted(String),
    /// TLS failed with this node (a certificate was refused, by either side): nothing was sent.
    /// Try the next; if nobody else answers, this is the error.
    Refused(String),
    /// The answer: give up with this error.
    Fail(ClientError),
}

/// The node indices of one pass: all of them, starting at `start`.
pub(crate) fn pass_order(start: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |k| (start + k) % len.max(1))
}

/// The pause after pass number `pass` (0-based): 50 ms, 100 ms, 200 ms, ..., at most 1 s.
pub(crate) fn backoff(pass: u32) -> Duration {
    INITIAL_BACKOFF
        .saturating_mul(1 << pass.min(16))
        .min(MAX_BACKOFF)
}

/// Sorts one failed attempt of a `kind` request sent to `address`.
pub(crate) fn classify(status: Status, kind: Kind, address: &str) -> Verdict {
    // First: a refused handshake also comes as a connection error, or (with TLS 1.3, where the
    // server checks the client's certificate after the client thinks the handshake is done) as
    // a broken connection, but the node never read the request.
    if let Some(why) = crate::tls::tls_failure(&status) {
        return Verdict::Refused(format!("{address}: {why}"));
    }
    let from_transport = status.source().is_some();
    match status.code() {
        _ if riteraft_proto::never_sent(&status) => {
            Verdict::Unreachable(format!("{address}: {}", status.message()))
        }
        // The connection broke after the request left (reset, keep-alive timeout, h2 error).
        // A read can go elsewhere; a write may have been applied.
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled if from_transport => {
            match kind {
                Kind::Read => Verdict::Unreachable(format!("{address}: {}", status.message())),
                Kind::Write => Verdict::Fail(ClientError::ConnectionLost {
                    address: address.to_string(),
                    message: status.message().to_string(),
                }),
            }
        }
        Code::Unavailable => Verdict::NotNow(format!("{address}: {}", status.message())),
        // A diverged replica refuses before it does anything: another node can serve.
        Code::DataLoss => Verdict::NotNow(format!("{address}: {}", status.message())),
        Code::DeadlineExceeded if kind == Kind::Read => {
            Verdict::NotNow(format!("{address}: {}", status.message()))
        }
        Code::DeadlineExceeded => Verdict::Fail(ClientError::Timeout(format!(
            "{address} could not commit the request in time ({}); it may still be applied later, so check with a query before sending it again",
            status.message()
        ))),
        Code::Aborted => Verdict::Aborted(format!("{address}: {}", status.message())),
        _ => Verdict::Fail(ClientError::from(status)),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn refused() -> Status {
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused");
        Status::from_error(Box::new(tonic::ConnectError(Box::new(io))))
    }

    /// What a stream broken mid-call looks like: a status carrying the transport error.
    fn broken() -> Status {
        let io = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset");
        Status::from_error(Box::new(io))
    }

    #[test]
    fn a_pass_starts_at_the_last_good_node_and_wraps() {
        assert_eq!(pass_order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(pass_order(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(pass_order(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(pass_order(0, 0).count(), 0);
    }

    #[test]
    fn backoff_doubles_up_to_a_second() {
        let pauses: Vec<u128> = (0..8).map(|p| backoff(p).as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        let total: Duration = (0..MAX_PASSES - 1).map(backoff).sum();
        assert!(total < Duration::from_secs(10), "{total:?}");
    }

    #[test]
    fn a_refused_connection_moves_on_for_reads_and_writes() {
        assert!(refused().source().is_some());
        for kind in [Kind::Read, Kind::Write] {
            let verdict = classify(refused(), kind, "a:1");
            assert!(
                matches!(&verdict, Verdict::Unreachable(m) if m.starts_with("a:1: ")),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn no_leader_moves_on_for_reads_and_writes() {
        for kind in [Kind::Read, Kind::Write] {
            let verdict = classify(Status::unavailable("no leader"), kind, "a:1");
            assert!(
                matches!(&verdict, Verdict::NotNow(m) if m == "a:1: no leader"),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn a_diverged_replica_moves_on_for_reads_and_writes() {
        for kind in [Kind::Read, Kind::Write] {
            let verdict = classify(Status::data_loss("diverged"), kind, "a:1");
            assert!(
                matches!(&verdict, Verdict::NotNow(m) if m == "a:1: diverged"),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn a_deadline_is_final_for_writes_only() {
        let read = classify(Status::deadline_exceeded("slow"), Kind::Read, "a:1");
        assert!(matches!(read, Verdict::NotNow(_)), "{read:?}");
        let write = classify(Status::deadline_exceeded("slow"), Kind::Write, "a:1");
        assert!(
            matches!(&write, Verdict::Fail(ClientError::Timeout(m)) if m.contains("may still be applied")),
            "{write:?}"
        );
    }

    #[test]
    fn a_broken_connection_is_final_for_writes_only() {
        let status = broken();
        assert!(status.source().is_some());
        let read = classify(broken(), Kind::Read, "a:1");
        assert!(matches!(read, Verdict::Unreachable(_)), "{read:?}");
        let write = classify(broken(), Kind::Write, "a:1");
        assert!(
            matches!(write, Verdict::Fail(ClientError::ConnectionLost { ref address, .. }) if address == "a:1"),
            "{write:?}"
        );
    }

    #[test]
    fn a_tls_failure_is_a_refusal_even_inside_a_connect_or_stream_error() {
        let handshake = io::Error::other(crate::tls::TlsError::Handshake {
            address: "a:1".into(),
            problem: "the peer's certificate is not signed by the CA this side trusts".into(),
        });
        let at_connect = Status::from_error(Box::new(tonic::ConnectError(Box::new(handshake))));
        // What a TLS 1.3 client sees when the server refuses its certificate: an alert on the
        // first read, which hyper reports as a broken connection.
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        let mid_stream = Status::from_error(Box::new(alert));
        // The same as it really arrives: h2 keeps only the kind and the text of I/O errors.
        let as_text = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        let from_h2 = Status::from_error(Box::new(as_text));
        for (status, why) in [
            (at_connect, "not signed by the CA"),
            (mid_stream, "refused this side's certificate (UnknownCA)"),
            (
                from_h2,
                "refused this side's certificate (CertificateRequired)",
            ),
        ] {
            for kind in [Kind::Read, Kind::Write] {
                let verdict = classify(status.clone(), kind, "a:1");
                assert!(
                    matches!(&verdict, Verdict::Refused(m) if m.starts_with("a:1: ") && m.contains(why)),
                    "{verdict:?}"
                );
            }
        }
        // A plain refused connection is still just unreachable.
        assert!(matches!(
            classify(refused(), Kind::Write, "a:1"),
            Verdict::Unreachable(_)
        ));
    }

    #[test]
    fn aborted_is_retryable_and_the_rest_is_the_answer() {
        let aborted = classify(Status::aborted("new leader"), Kind::Write, "a:1");
        assert!(matches!(aborted, Verdict::Aborted(_)), "{aborted:?}");
        let bad = classify(Status::invalid_argument("too big"), Kind::Write, "a:1");
        assert!(
            matches!(bad, Verdict::Fail(ClientError::InvalidArgument(_))),
            "{bad:?}"
        );
        let unknown_id = classify(Status::failed_precondition("no node 9"), Kind::Write, "a:1");
        assert!(
            matches!(
                unknown_id,
                Verdict::Fail(ClientError::FailedPrecondition(_))
            ),
            "{unknown_id:?}"
        );
    }
}
