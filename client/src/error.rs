//! [`ClientError`]: why a call got no answer from the cluster, worded so the user knows what to
//! do next. A store's rejection of a command is *not* an error here: it is an answer (see
//! [`Applied`](crate::Applied)).

use riteraft_proto::DialError;
use tonic::Code;

/// Why a call to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node could be reached at all (connection refused or timed out on every address).
    #[error(
        "could not reach any node (tried {}): {last}; check that the nodes are running and that the addresses are right",
        .tried.join(", ")
    )]
    NoNodeReachable {
        /// The addresses tried, in order.
        tried: Vec<String>,
        /// The last connection error.
        last: String,
    },
    /// Nodes answered but could not serve the call (no leader known: an election is running, or
    /// the cluster lost its majority); nothing was applied.
    #[error("the cluster cannot serve requests right now: {0}; try again once a leader is elected")]
    Unavailable(String),
    /// No answer in time. A write that timed out may still be applied later.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The request was lost to a leader change and will never apply; sending it again is safe.
    #[error(
        "the request was lost to a leader change and was not applied: {0}; it is safe to send it again"
    )]
    Aborted(String),
    /// The node refused the request as malformed or too large.
    #[error("the node refused the request as malformed or too large: {0}")]
    InvalidArgument(String),
    /// The request does not fit the cluster's state (e.g. an unknown node id).
    #[error("the request does not fit the cluster's state: {0}")]
    FailedPrecondition(String),
    /// The node is out of a resource (its disk is nearly full): writes are refused until an
    /// operator frees some; reads still work.
    #[error("the node refused the write: {0}")]
    ResourceExhausted(String),
    /// The connection broke after a write was sent: it may or may not have been applied.
    #[error(
        "the connection to {address} broke during the request ({message}); it may or may not have been applied, check with a query before sending it again"
    )]
    ConnectionLost {
        /// The node the request was sent to.
        address: String,
        /// What the transport said.
        message: String,
    },
    /// Any other gRPC failure, as the node or the transport reported it.
    #[error("unexpected failure: {}", describe(.0))]
    Other(tonic::Status),
    /// An address is not `HOST:PORT` (the message says which and why).
    #[error("{0}")]
    BadAddress(String),
    /// TLS failed: a node refused this client's certificate, this client refused a node's, or a
    /// node is not the one expected. Nothing was sent; trying again will not help until the
    /// certificates are fixed.
    #[error("{0}")]
    Tls(String),
}

impl From<DialError> for ClientError {
    fn from(error: DialError) -> Self {
        match error {
            DialError::BadAddress(why) => ClientError::BadAddress(why),
            DialError::Tls(why) => ClientError::Tls(why),
            DialError::Unreachable { address, reason } => ClientError::NoNodeReachable {
                tried: vec![address],
                last: reason,
            },
        }
    }
}

impl From<tonic::Status> for ClientError {
    /// Maps a status by its code alone, as `proto/riteraft.proto` defines the codes. The client's
    /// retry loop looks at statuses before they get here (see `failover`); this is the answer
    /// once it has given up on retrying.
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Unavailable => ClientError::Unavailable(message),
            Code::DeadlineExceeded => ClientError::Timeout(format!(
                "the node could not complete the request in time ({message}); a write may still be applied later, check with a query before sending it again"
            )),
            Code::Aborted => ClientError::Aborted(message),
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::FailedPrecondition => ClientError::FailedPrecondition(message),
            Code::ResourceExhausted => ClientError::ResourceExhausted(message),
            _ => ClientError::Other(status),
        }
    }
}

/// A status for people: its message and what its code means.
fn describe(status: &tonic::Status) -> String {
    let meaning = status.code().description();
    if status.message().is_empty() {
        meaning.to_string()
    } else {
        format!("{} ({meaning})", status.message())
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;

    use super::*;

    #[test]
    fn status_codes_map_as_the_contract_says() {
        type Expected = fn(&ClientError) -> bool;
        let cases: [(Status, Expected); 7] = [
            (
                Status::unavailable("no leader"),
                |e| matches!(e, ClientError::Unavailable(m) if m == "no leader"),
            ),
            (
                Status::deadline_exceeded("not committed"),
                |e| matches!(e, ClientError::Timeout(m) if m.contains("not committed") && m.contains("may still be applied")),
            ),
            (
                Status::aborted("leader changed"),
                |e| matches!(e, ClientError::Aborted(m) if m == "leader changed"),
            ),
            (
                Status::invalid_argument("too big"),
                |e| matches!(e, ClientError::InvalidArgument(m) if m == "too big"),
            ),
            (
                Status::failed_precondition("no node 9"),
                |e| matches!(e, ClientError::FailedPrecondition(m) if m == "no node 9"),
            ),
            (
                Status::internal("boom"),
                |e| matches!(e, ClientError::Other(s) if s.code() == Code::Internal),
            ),
            (
                Status::unimplemented("old node"),
                |e| matches!(e, ClientError::Other(s) if s.code() == Code::Unimplemented),
            ),
        ];
        for (status, expected) in cases {
            let shown = format!("{status:?}");
            let error = ClientError::from(status);
            assert!(expected(&error), "{shown} became {error:?}");
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let error = ClientError::NoNodeReachable {
            tried: vec!["a:1".into(), "b:2".into()],
            last: "connection refused".into(),
        };
        assert_eq!(
            error.to_string(),
            "could not reach any node (tried a:1, b:2): connection refused; check that the nodes are running and that the addresses are right"
        );
        assert!(
            ClientError::Aborted("x".into())
                .to_string()
                .contains("safe to send it again")
        );
        let other = ClientError::from(Status::internal("boom")).to_string();
        assert_eq!(other, "unexpected failure: boom (Internal error)");
        let bare = ClientError::from(Status::unknown("")).to_string();
        assert_eq!(bare, "unexpected failure: Unknown error");
    }
}
