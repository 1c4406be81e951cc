//! The door for peers' raft messages: what a message from the wire must be before raft-rs sees
//! it.
//!
//! raft-rs trusts its input: it panics on an empty `MsgPropose`, on appended entries that skip
//! indexes, on a `MsgReadIndex` without its context entry, and treats a message of term 0 as one
//! of its own local messages. Any of those from the network (a bug in a peer, or someone who
//! can reach the port) would stop a node, and the same message again after every restart.
//! So every message is checked here first, against what the node knows (its id, the members,
//! its log), and refused with a reason if it is not one that a correct peer could have sent.
//! A refused message is dropped; raft's retransmission covers a peer that meant well.

use std::collections::BTreeMap;

use raft::prelude::{Message, MessageType};

use crate::replicated::EntryPayload;

/// Why a peer's message was not handed to raft.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A type that only raft-rs itself makes locally, or that this node never sends to a peer
    /// (proposals travel as `Client.Propose`, transfers as `Client.TransferLeader`; the one
    /// proposal raft forwards is a replica's digest report, see [`Refused::NotADigestReport`]).
    #[error("a {0:?} never crosses the wire between nodes")]
    LocalType(MessageType),
    /// Addressed to another node.
    #[error("addressed to node {to}, but this is node {me}")]
    WrongRecipient { to: u64, me: u64 },
    /// From a node that is no longer a member (ids are never reused), or this node's own id.
    #[error("from node {0}, which is not a member of the cluster")]
    NotAMember(u64),
    /// The sender's certificate names another member than the message's `from`.
    #[error("claims to be from node {from}, but the sender's certificate names {sender}")]
    Impostor { from: u64, sender: String },
    /// Term 0 marks raft-rs' own local messages; only a forwarded read index has it on the wire.
    #[error("a {0:?} with term 0")]
    NoTerm(MessageType),
    /// Appended entries must follow the previous entry one by one, in no later term than the
    /// message's.
    #[error("entry {position} of the append is malformed: {why}")]
    BadEntries { position: usize, why: String },
    /// A read-index request or answer carries exactly one entry: its context.
    #[error("a {0:?} must carry exactly one entry, its context")]
    BadReadIndex(MessageType),
    /// A follower acknowledged entries this leader never had.
    #[error("acknowledges index {index}, past this node's last entry {last}")]
    AckPastLog { index: u64, last: u64 },
    /// Leader traffic in this node's term from a member that is not the leader it knows: two
    /// leaders in one term cannot be, and following the second would let it overwrite entries.
    #[error("leader traffic in term {term} from node {from}, but node {leader} leads that term")]
    NotTheLeader { from: u64, leader: u64, term: u64 },
    /// A leadership transfer that the leader did not ask for.
    #[error("a MsgTimeoutNow from node {from}, which is not this node's leader in its term")]
    UnaskedTransfer { from: u64 },
    /// The only proposal a peer may forward is its own report of its answers' digest (see
    /// `node::divergence`): at most a few, each an entry of its own.
    #[error("a forwarded proposal that is not the sender's digest report: {0}")]
    NotADigestReport(String),
    /// A snapshot that would not move this node forward, or is malformed.
    #[error("snapshot refused: {0}")]
    BadSnapshot(String),
}

/// What the node knows that the checks need.
pub struct Local<'a> {
    /// This node's id.
    pub id: u64,
    /// The current members, by id.
    pub members: &'a BTreeMap<u64, String>,
    /// The id the next node to join will get, as far as this node knows.
    pub next_node_id: u64,
    /// The index of the last entry in this node's log.
    pub last_index: u64,
    /// The index this node has applied: no snapshot at or below it is of any use.
    pub applied: u64,
    /// The member address the sender's certificate names; `None` without TLS, where senders
    /// cannot be told apart.
    pub sender: Option<&'a str>,
    /// This node's term, and the leader it knows in it (0: none).
    pub term: u64,
    pub leader_id: u64,
}

/// Checks one message from a peer. `Ok` means raft-rs may step it.
pub fn check(message: &Message, local: &Local) -> Result<(), Refused> {
    use MessageType::*;
    let kind = message.get_msg_type();
    match kind {
        MsgAppend
        | MsgAppendResponse
        | MsgRequestVote
        | MsgRequestVoteResponse
        | MsgRequestPreVote
        | MsgRequestPreVoteResponse
        | MsgSnapshot
        | MsgHeartbeat
        | MsgHeartbeatResponse
        | MsgTimeoutNow
        | MsgReadIndex
        | MsgReadIndexResp => {}
        MsgPropose => {
            if message.to != local.id {
                return Err(Refused::WrongRecipient {
                    to: message.to,
                    me: local.id,
                });
            }
            check_sender(message.from, local)?;
            return check_digest_reports(message);
        }
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum | MsgTransferLeader => {
            return Err(Refused::LocalType(kind));
        }
    }
    if message.to != local.id {
        return Err(Refused::WrongRecipient {
            to: message.to,
            me: local.id,
        });
    }
    check_sender(message.from, local)?;
    // raft-rs sends a follower's read-index request to the leader without a term.
    if message.term == 0 && kind != MsgReadIndex {
        return Err(Refused::NoTerm(kind));
    }
    let from_leader_of_my_term = message.term == local.term && message.from == local.leader_id;
    match kind {
        MsgAppend | MsgHeartbeat | MsgSnapshot
            if message.term == local.term
                && local.leader_id != raft::INVALID_ID
                && message.from != local.leader_id =>
        {
            Err(Refused::NotTheLeader {
                from: message.from,
                leader: local.leader_id,
                term: local.term,
            })
        }
        MsgTimeoutNow if !from_leader_of_my_term => {
            Err(Refused::UnaskedTransfer { from: message.from })
        }
        MsgAppend => check_entries(message),
        MsgReadIndex | MsgReadIndexResp if message.entries.len() != 1 => {
            Err(Refused::BadReadIndex(kind))
        }
        MsgAppendResponse if !message.reject && message.index > local.last_index => {
            Err(Refused::AckPastLog {
                index: message.index,
                last: local.last_index,
            })
        }
        MsgSnapshot => check_snapshot(message, local),
        _ => Ok(()),
    }
}

/// Most digest reports one forwarded proposal may carry: a replica reports once per
/// checkpoint, and raft forwards what queued up in one round.
const MAX_FORWARDED_REPORTS: usize = 4;

/// A forwarded proposal must hold only the sender's own digest reports.
fn check_digest_reports(message: &Message) -> Result<(), Refused> {
    let refuse = |why: String| Err(Refused::NotADigestReport(why));
    if message.entries.is_empty() || message.entries.len() > MAX_FORWARDED_REPORTS {
        return refuse(format!("{} entries", message.entries.len()));
    }
    for entry in &message.entries {
        if entry.get_entry_type() != raft::prelude::EntryType::EntryNormal {
            return refuse(format!("a {:?}", entry.get_entry_type()));
        }
        match crate::replicated::decode::<EntryPayload>("forwarded entry", &entry.data) {
            Ok(EntryPayload::DigestReport { node, .. }) if node == message.from => {}
            Ok(EntryPayload::DigestReport { node, .. }) => {
                return refuse(format!(
                    "a report for node {node} from node {}",
                    message.from
                ));
            }
            Ok(_) => return refuse("a client's command".into()),
            Err(e) => return refuse(e.to_string()),
        }
    }
    Ok(())
}

/// The sender must be a member, and the one its certificate names. A node that was cut off
/// while others joined does not know them yet, and must still hear from them (one of them may
/// lead now, and only the log it sends tells of the join): so an id this node has not handed
/// out yet (`next_node_id` or above) passes too, unless its certificate names a member this
/// node knows. Ids below that which are not members are removed nodes: ids are never reused.
fn check_sender(from: u64, local: &Local) -> Result<(), Refused> {
    let impostor = |sender: &str| Refused::Impostor {
        from,
        sender: sender.to_string(),
    };
    if from == local.id {
        return Err(Refused::NotAMember(from));
    }
    match local.members.get(&from) {
        Some(address) => match local.sender {
            Some(sender) if sender != address => Err(impostor(sender)),
            _ => Ok(()),
        },
        None if from < local.next_node_id || from == raft::INVALID_ID => {
            Err(Refused::NotAMember(from))
        }
        None => match local.sender {
            Some(sender) if local.members.values().any(|known| known == sender) => {
                Err(impostor(sender))
            }
            _ => Ok(()),
        },
    }
}

/// Entries of an append follow `message.index` one by one, with terms that never go down and
/// never exceed the message's term (raft-rs indexes its log by position and panics otherwise).
fn check_entries(message: &Message) -> Result<(), Refused> {
    let mut previous_term = message.log_term;
    for (position, entry) in message.entries.iter().enumerate() {
        let bad = |why: String| Refused::BadEntries { position, why };
        let expected = message
            .index
            .checked_add(1 + position as u64)
            .ok_or_else(|| bad("the index overflows".into()))?;
        if entry.index != expected {
            return Err(bad(format!(
                "index {} where {expected} must follow",
                entry.index
            )));
        }
        if entry.term < previous_term || entry.term > message.term {
            return Err(bad(format!(
                "term {} after term {previous_term} in a message of term {}",
                entry.term, message.term
            )));
        }
        previous_term = entry.term;
    }
    Ok(())
}

/// A snapshot must move this node forward and name a membership. (Its data is checked where it
/// is received, off the consensus thread: see `grpc_services/raft_service.rs`.)
fn check_snapshot(message: &Message, local: &Local) -> Result<(), Refused> {
    let metadata = message.get_snapshot().get_metadata();
    if metadata.index <= local.applied {
        return Err(Refused::BadSnapshot(format!(
            "it stands at index {}, and this node has applied {}",
            metadata.index, local.applied
        )));
    }
    if metadata.term == 0 || metadata.term > message.term {
        return Err(Refused::BadSnapshot(format!(
            "its term {} does not fit the message's term {}",
            metadata.term, message.term
        )));
    }
    if metadata.get_conf_state().voters.is_empty() {
        return Err(Refused::BadSnapshot("its membership has no voters".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use raft::prelude::{Entry, Snapshot};

    use super::*;

    fn members() -> BTreeMap<u64, String> {
        (1..=3)
            .map(|id| (id, format!("127.0.0.1:700{id}")))
            .collect()
    }

    fn local(members: &BTreeMap<u64, String>) -> Local<'_> {
        Local {
            id: 2,
            members,
            next_node_id: 4,
            last_index: 10,
            applied: 8,
            sender: None,
            term: 3,
            leader_id: 1,
        }
    }

    fn message(kind: MessageType) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 1;
        m.to = 2;
        m.term = 3;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn a_well_formed_append_passes() {
        let members = members();
        let mut m = message(MessageType::MsgAppend);
        m.index = 10;
        m.log_term = 2;
        m.entries = vec![entry(11, 2), entry(12, 3)].into();
        assert_eq!(check(&m, &local(&members)), Ok(()));
    }

    #[test]
    fn local_types_are_refused() {
        let members = members();
        for kind in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
            MessageType::MsgTransferLeader,
        ] {
            assert_eq!(
                check(&message(kind), &local(&members)),
                Err(Refused::LocalType(kind))
            );
        }
    }

    fn report(node: u64) -> Entry {
        Entry {
            data: crate::replicated::encode(&EntryPayload::DigestReport {
                node,
                index: 1000,
                digest: [7; 32],
            })
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_only_forwarded_proposal_is_the_senders_digest_report() {
        let members = members();
        let mut m = message(MessageType::MsgPropose);
        // As raft-rs forwards it: without a term.
        m.term = 0;
        m.entries = vec![report(1)].into();
        assert_eq!(check(&m, &local(&members)), Ok(()));
        let refused = |m: &Message| {
            matches!(
                check(m, &local(&members)),
                Err(Refused::NotADigestReport(_))
            )
        };
        m.entries = vec![report(3)].into();
        assert!(refused(&m), "a report for another node");
        m.entries = Vec::new().into();
        assert!(refused(&m), "empty: raft-rs panics on it");
        m.entries = vec![report(1); MAX_FORWARDED_REPORTS + 1].into();
        assert!(refused(&m), "too many");
        let command = crate::replicated::encode(&EntryPayload::Command {
            proposer: 1,
            request_id: 1,
            timestamp_ms: 0,
            command: b"put a 1".to_vec(),
        });
        m.entries = vec![Entry {
            data: command.into(),
            ..Default::default()
        }]
        .into();
        assert!(
            refused(&m),
            "a client's command must come as Client.Propose"
        );
        m.entries = vec![entry(0, 0)].into();
        assert!(refused(&m), "an empty entry");
        m.entries = vec![report(1)].into();
        m.from = 9;
        assert!(check(&m, &local(&members)).is_err(), "from a stranger");
    }

    #[test]
    fn strangers_and_misaddressed_messages_are_refused() {
        let members = members();
        let mut m = message(MessageType::MsgHeartbeat);
        // An id handed out before that is not a member: a removed node.
        let removed_one = BTreeMap::from([(1, "a".to_string()), (2, "b".to_string())]);
        m.from = 3;
        assert_eq!(check(&m, &local(&removed_one)), Err(Refused::NotAMember(3)));
        m.from = 2;
        assert_eq!(check(&m, &local(&members)), Err(Refused::NotAMember(2)));
        m.from = 0;
        assert_eq!(check(&m, &local(&members)), Err(Refused::NotAMember(0)));
        m.from = 1;
        m.to = 3;
        assert!(matches!(
            check(&m, &local(&members)),
            Err(Refused::WrongRecipient { to: 3, me: 2 })
        ));
    }

    #[test]
    fn a_member_that_joined_unseen_is_heard() {
        // Node 9 joined (and may lead) while this node was cut off: it must hear from it.
        let members = members();
        let mut m = message(MessageType::MsgAppend);
        m.from = 9;
        m.index = 10;
        m.log_term = 3;
        let unknown = Local {
            leader_id: 0,
            sender: Some("127.0.0.1:7009"),
            ..local(&members)
        };
        assert_eq!(check(&m, &unknown), Ok(()));
        // But not a known member posing as a new one.
        let posing = Local {
            sender: Some("127.0.0.1:7003"),
            ..unknown
        };
        assert!(matches!(
            check(&m, &posing),
            Err(Refused::Impostor { from: 9, .. })
        ));
    }

    #[test]
    fn a_member_cannot_speak_for_another() {
        let members = members();
        let m = message(MessageType::MsgHeartbeat);
        let from_3 = Local {
            sender: Some("127.0.0.1:7003"),
            ..local(&members)
        };
        assert!(matches!(
            check(&m, &from_3),
            Err(Refused::Impostor { from: 1, .. })
        ));
        let from_1 = Local {
            sender: Some("127.0.0.1:7001"),
            ..local(&members)
        };
        assert_eq!(check(&m, &from_1), Ok(()));
    }

    #[test]
    fn only_the_known_leader_of_the_term_sends_leader_traffic() {
        let members = members();
        for kind in [MessageType::MsgAppend, MessageType::MsgHeartbeat] {
            let mut m = message(kind);
            m.from = 3;
            assert_eq!(
                check(&m, &local(&members)),
                Err(Refused::NotTheLeader {
                    from: 3,
                    leader: 1,
                    term: 3
                })
            );
            // A later term is a new leader's: raft itself steps down for it.
            m.term = 4;
            assert_eq!(check(&m, &local(&members)), Ok(()));
            // Without a known leader, the first one of the term is how this node learns it.
            m.term = 3;
            let leaderless = Local {
                leader_id: 0,
                ..local(&members)
            };
            assert_eq!(check(&m, &leaderless), Ok(()));
        }
    }

    #[test]
    fn only_the_leader_may_hand_over_leadership() {
        let members = members();
        let mut m = message(MessageType::MsgTimeoutNow);
        assert_eq!(check(&m, &local(&members)), Ok(()));
        m.from = 3;
        assert_eq!(
            check(&m, &local(&members)),
            Err(Refused::UnaskedTransfer { from: 3 })
        );
        m.from = 1;
        m.term = 4;
        assert_eq!(
            check(&m, &local(&members)),
            Err(Refused::UnaskedTransfer { from: 1 })
        );
    }

    #[test]
    fn term_zero_is_only_for_read_index_requests() {
        let members = members();
        let mut m = message(MessageType::MsgAppend);
        m.term = 0;
        assert_eq!(
            check(&m, &local(&members)),
            Err(Refused::NoTerm(MessageType::MsgAppend))
        );
        let mut read = message(MessageType::MsgReadIndex);
        read.term = 0;
        read.entries = vec![Entry::default()].into();
        assert_eq!(check(&read, &local(&members)), Ok(()));
        read.entries.clear();
        assert_eq!(
            check(&read, &local(&members)),
            Err(Refused::BadReadIndex(MessageType::MsgReadIndex))
        );
    }

    #[test]
    fn appends_that_skip_or_reorder_are_refused() {
        let members = members();
        let mut m = message(MessageType::MsgAppend);
        m.index = 10;
        m.log_term = 2;
        m.entries = vec![entry(11, 2), entry(13, 2)].into();
        assert!(matches!(
            check(&m, &local(&members)),
            Err(Refused::BadEntries { position: 1, .. })
        ));
        m.entries = vec![entry(11, 3), entry(12, 2)].into();
        assert!(matches!(
            check(&m, &local(&members)),
            Err(Refused::BadEntries { position: 1, .. })
        ));
        m.entries = vec![entry(11, 4)].into();
        assert!(matches!(
            check(&m, &local(&members)),
            Err(Refused::BadEntries { position: 0, .. })
        ));
        m.index = u64::MAX;
        m.entries = vec![entry(0, 3)].into();
        assert!(matches!(
            check(&m, &local(&members)),
            Err(Refused::BadEntries { .. })
        ));
    }

    #[test]
    fn an_ack_past_the_log_is_refused() {
        let members = members();
        let mut m = message(MessageType::MsgAppendResponse);
        m.index = 11;
        assert!(matches!(
            check(&m, &local(&members)),
            Err(Refused::AckPastLog {
                index: 11,
                last: 10
            })
        ));
        m.index = 10;
        assert_eq!(check(&m, &local(&members)), Ok(()));
    }

    #[test]
    fn old_or_memberless_snapshots_are_refused() {
        let members = members();
        let mut m = message(MessageType::MsgSnapshot);
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 8;
        snapshot.mut_metadata().term = 3;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m.set_snapshot(snapshot.clone());
        assert!(matches!(
            check(&m, &local(&members)),
            Err(Refused::BadSnapshot(_))
        ));
        snapshot.mut_metadata().index = 9;
        m.set_snapshot(snapshot.clone());
        assert_eq!(check(&m, &local(&members)), Ok(()));
        snapshot.mut_metadata().mut_conf_state().voters.clear();
        m.set_snapshot(snapshot);
        assert!(matches!(
            check(&m, &local(&members)),
            Err(Refused::BadSnapshot(_))
        ));
    }
}
