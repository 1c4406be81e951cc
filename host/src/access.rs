//! Who may make which call. With TLS, every connection is authenticated by its certificate
//! (see `listener.rs`): a client certificate grants a role, a node certificate names a member.
//!
//! - `read`: `Query`, `Status`;
//! - `write`: the above and `Propose`;
//! - `admin`: the above and `Deploy`, `Leave`, `TransferLeader`;
//! - a node certificate: everything, including the `Raft` service and `Join` (for the address
//!   it names only). Nodes forward clients' calls to the leader, so the leader trusts a
//!   forwarding node to have checked the client's role.
//!
//! Without TLS there is nothing to tell callers apart, so every caller may do everything; the
//! node then listens on loopback only unless told `--insecure` (see `startup.rs`).

use std::sync::{Arc, LazyLock};

use riteraft_proto::tls::Role;
use tonic::{Request, Status};

use crate::listener::Caller;
use crate::log_limit::LogLimiter;

/// Refused calls, logged at most once a second (a caller can make them at will).
static REFUSAL_LOG: LazyLock<LogLimiter> = LazyLock::new(LogLimiter::new);

/// What a call needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// At least this client role (or a node).
    Role(Role),
    /// A node certificate: calls between members.
    Node,
}

/// The caller of `request`, as its connection was authenticated. A request that did not come
/// through our listener (which never happens in a running node) counts as unauthenticated.
pub fn caller<T>(request: &Request<T>) -> Arc<Caller> {
    request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .unwrap_or_else(|| {
            Arc::new(Caller::Unnamed {
                why: "the connection was not authenticated".into(),
            })
        })
}

/// Lets the call `name` through if its caller has `need`, else answers `UNAUTHENTICATED` or
/// `PERMISSION_DENIED` with what was missing, and logs the refusal.
pub fn authorize<T>(request: &Request<T>, need: Need, name: &str) -> Result<Arc<Caller>, Status> {
    let caller = caller(request);
    check(&caller, need, name)?;
    Ok(caller)
}

/// [`authorize`] for a caller already known: one request of a stream (see `Client.Pipeline`),
/// whose connection was authenticated when the stream opened.
pub fn check(caller: &Caller, need: Need, name: &str) -> Result<(), Status> {
    let refusal = match (caller, need) {
        (Caller::Anyone | Caller::Node { .. }, _) => None,
        (Caller::Client { role, .. }, Need::Role(needed)) if *role >= needed => None,
        (Caller::Client { name: who, role }, Need::Role(needed)) => {
            Some(Status::permission_denied(format!(
                "{name} needs the {needed} role; the certificate of client {who:?} grants {role}"
            )))
        }
        (Caller::Client { name: who, .. }, Need::Node) => Some(Status::permission_denied(format!(
            "{name} is for cluster members; the certificate of client {who:?} names no node"
        ))),
        (Caller::Unnamed { why }, _) => Some(Status::unauthenticated(format!(
            "{name} refused: the certificate names no RiteRaft node or role ({why})"
        ))),
    };
    match refusal {
        None => Ok(()),
        Some(status) => {
            if let Some(held_back) = REFUSAL_LOG.admit() {
                tracing::warn!(
                    call = name,
                    more_since_last = held_back,
                    "refused: {}",
                    status.message()
                );
            }
            Err(status)
        }
    }
}

/// Whether the caller may speak for other nodes' clients (forward their calls): nodes, and
/// anyone without TLS.
pub fn is_node(caller: &Caller) -> bool {
    matches!(caller, Caller::Anyone | Caller::Node { .. })
}

/// The member address a node caller's certificate names (`None` without TLS).
pub fn node_address(caller: &Caller) -> Option<Arc<str>> {
    match caller {
        Caller::Node { address } => Some(Arc::from(address.as_str())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(caller: Caller) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(Arc::new(caller));
        request
    }

    fn client(role: Role) -> Caller {
        Caller::Client {
            name: "c".into(),
            role,
        }
    }

    #[test]
    fn roles_are_ordered_read_write_admin() {
        let needs = [Role::Read, Role::Write, Role::Admin];
        for (i, has) in needs.iter().enumerate() {
            for (j, needed) in needs.iter().enumerate() {
                let result = authorize(&request_from(client(*has)), Need::Role(*needed), "X");
                assert_eq!(result.is_ok(), i >= j, "{has} for {needed}");
                if let Err(status) = result {
                    assert_eq!(status.code(), tonic::Code::PermissionDenied);
                    assert!(
                        status
                            .message()
                            .contains(&format!("needs the {needed} role"))
                    );
                }
            }
        }
    }

    #[test]
    fn only_nodes_reach_the_raft_service() {
        let admin = authorize(
            &request_from(client(Role::Admin)),
            Need::Node,
            "Raft.Stream",
        );
        assert_eq!(admin.unwrap_err().code(), tonic::Code::PermissionDenied);
        let node = Caller::Node {
            address: "127.0.0.1:1".into(),
        };
        assert!(authorize(&request_from(node), Need::Node, "Raft.Stream").is_ok());
    }

    #[test]
    fn unnamed_or_unauthenticated_callers_are_refused() {
        let unnamed = Caller::Unnamed { why: "x".into() };
        let status =
            authorize(&request_from(unnamed), Need::Role(Role::Read), "Status").unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = authorize(&Request::new(()), Need::Role(Role::Read), "Status").unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
}
