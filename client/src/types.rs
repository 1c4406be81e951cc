//! What the cluster answers, as plain Rust types: [`Applied`] for a command, [`Answer`] for a
//! query, [`NodeStatus`] for a node's view of the cluster. They serialize with serde so that
//! tools (the `riteraft --json` CLI among them) can print them as they are.

use serde::Serialize;

use crate::proto;

/// A command that went through the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The log index at which it was applied.
    pub index: u64,
    /// The store's answer: its output, or the reason it rejected the command. A rejection is
    /// replicated like any answer (every replica rejected it the same way); it is not a failure
    /// of the cluster.
    pub result: Result<Vec<u8>, String>,
}

/// The answer to a read-only query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The applied index of the state that answered.
    pub applied_index: u64,
    /// The store's output, or the reason it refused the query.
    pub result: Result<Vec<u8>, String>,
}

/// How fresh a query's answer must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The answer reflects every write acknowledged before the query was sent (raft ReadIndex:
    /// the node checks with the leader first).
    #[default]
    Linearizable,
    /// The contacted node answers from its own state at once: faster, possibly behind.
    Stale,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Its raft id.
    pub id: u64,
    /// Where it serves peers and clients.
    pub address: String,
    /// "voter" or "learner" (empty from a node older than learners).
    pub role: String,
    /// For a learner, what becomes of it: "promote", "stay" or "replace N".
    #[serde(skip_serializing_if = "String::is_empty")]
    pub plan: String,
    /// The last log index the leader knows this member holds: only in a leader's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_index: Option<u64>,
    /// How many committed entries it lacks (the leader's commit index minus `match_index`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// One change of the store's module (a hot swap), as recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    /// Log index of the entry that switched the module.
    pub index: u64,
    /// sha256 of the new module, in hex.
    pub sha256: String,
    /// The leader's timestamp of that entry, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The module's version string, if it exports one.
    pub version: Option<String>,
}

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The node's raft id.
    pub id: u64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: String,
    /// The leader this node knows of, if any.
    pub leader_id: Option<u64>,
    /// The node's current raft term.
    pub term: u64,
    /// Highest log index known to be committed.
    pub commit_index: u64,
    /// Highest log index applied to the store.
    pub applied_index: u64,
    /// Index of the last snapshot this node holds.
    pub snapshot_index: u64,
    /// sha256 of the active store module, in hex.
    pub plugin_sha256: String,
    /// The active module's version string, if it exports one.
    pub plugin_version: Option<String>,
    /// The members of the cluster, as this node knows them.
    pub members: Vec<Member>,
    /// Every change of store module, oldest first.
    pub upgrades: Vec<Upgrade>,
    /// Set when this replica's answers differ from the cluster's: it serves no reads or
    /// writes until rebuilt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// The newest log entry format the node's host reads: 2 reads entries packing several
    /// commands, 0 is a host older than that (a leader packs only while every member reads 2).
    pub log_format: u32,
}

/// Joining: the id the cluster gave the new node, and the members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Joined {
    /// The new node's raft id.
    pub id: u64,
    /// The members, the new node included.
    pub members: Vec<Member>,
}

/// The answer to a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployed {
    /// sha256 of the module, in hex.
    pub sha256: String,
    /// The module's version string, if it exports one.
    pub version: Option<String>,
    /// The log index of the deploy entry (0 for a dry run).
    pub index: u64,
    /// The module was already active: nothing changed.
    pub unchanged: bool,
    /// What happened, for people.
    pub message: String,
}

/// A step of a deploy as it goes (see [`Client::deploy_watched`](crate::Client::deploy_watched)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DeployStep {
    /// `sent` of the module's `total` bytes handed to the connection.
    Upload { sent: u64, total: u64 },
    /// A step a node reports: its `stage` ("received", "compiled", "forwarded", "stored" or
    /// "proposed"), what happened for people, and the time since that node had the upload.
    Node {
        stage: String,
        message: String,
        elapsed: std::time::Duration,
    },
}

/// Proto strings use "" for "none".
fn non_empty(text: String) -> Option<String> {
    if text.is_empty() { None } else { Some(text) }
}

impl From<proto::ProposeResponse> for Applied {
    fn from(response: proto::ProposeResponse) -> Self {
        use proto::propose_response::Result as R;
        let result = match response.result {
            Some(R::Output(output)) => Ok(output),
            Some(R::Rejection(rejection)) => Err(rejection),
            // Only a node that forgot to set the oneof sends this; the nearest meaning is an
            // empty answer (protobuf cannot tell "unset" from "empty" for a plain bytes field).
            None => Ok(Vec::new()),
        };
        Applied {
            index: response.index,
            result,
        }
    }
}

impl From<proto::QueryResponse> for Answer {
    fn from(response: proto::QueryResponse) -> Self {
        use proto::query_response::Result as R;
        let result = match response.result {
            Some(R::Output(output)) => Ok(output),
            Some(R::Rejection(rejection)) => Err(rejection),
            // As for proposals: unset reads as an empty answer.
            None => Ok(Vec::new()),
        };
        Answer {
            applied_index: response.applied_index,
            result,
        }
    }
}

impl From<proto::Member> for Member {
    fn from(member: proto::Member) -> Self {
        Member {
            id: member.id,
            address: member.address,
            role: member.role,
            plan: member.plan,
            match_index: (member.match_index > 0).then_some(member.match_index),
            lag: None,
        }
    }
}

impl From<proto::Upgrade> for Upgrade {
    fn from(upgrade: proto::Upgrade) -> Self {
        Upgrade {
            index: upgrade.index,
            sha256: upgrade.sha256,
            timestamp_ms: upgrade.timestamp_ms,
            version: non_empty(upgrade.version),
        }
    }
}

impl From<proto::StatusResponse> for NodeStatus {
    fn from(status: proto::StatusResponse) -> Self {
        NodeStatus {
            id: status.id,
            role: status.role,
            leader_id: (status.leader_id != 0).then_some(status.leader_id),
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            snapshot_index: status.snapshot_index,
            plugin_sha256: status.plugin_sha256,
            plugin_version: non_empty(status.plugin_version),
            members: status
                .members
                .into_iter()
                .map(|member| {
                    let mut member = Member::from(member);
                    member.lag = member
                        .match_index
                        .map(|matched| status.commit_index.saturating_sub(matched));
                    member
                })
                .collect(),
            upgrades: status.upgrades.into_iter().map(Upgrade::from).collect(),
            alarm: non_empty(status.alarm),
            log_format: status.log_format,
        }
    }
}

impl NodeStatus {
    /// Takes each member's role, match index and lag from `leader`'s status: only the leader
    /// knows how far each member is.
    pub fn with_members_of(mut self, leader: NodeStatus) -> Self {
        self.members = leader.members;
        self
    }
}

impl From<proto::JoinResponse> for Joined {
    fn from(joined: proto::JoinResponse) -> Self {
        Joined {
            id: joined.id,
            members: joined.members.into_iter().map(Member::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propose_response_keeps_output_and_rejection_apart() {
        use proto::propose_response::Result as R;
        let ok = Applied::from(proto::ProposeResponse {
            index: 7,
            result: Some(R::Output(b"one".to_vec())),
        });
        assert_eq!(ok.index, 7);
        assert_eq!(ok.result, Ok(b"one".to_vec()));
        let no = Applied::from(proto::ProposeResponse {
            index: 8,
            result: Some(R::Rejection("no such key".into())),
        });
        assert_eq!(no.result, Err("no such key".to_string()));
        let unset = Applied::from(proto::ProposeResponse {
            index: 9,
            result: None,
        });
        assert_eq!(unset.result, Ok(Vec::new()));
    }

    #[test]
    fn query_response_keeps_output_and_rejection_apart() {
        use proto::query_response::Result as R;
        let ok = Answer::from(proto::QueryResponse {
            applied_index: 3,
            result: Some(R::Output(b"v".to_vec())),
        });
        assert_eq!(ok.applied_index, 3);
        assert_eq!(ok.result, Ok(b"v".to_vec()));
        let no = Answer::from(proto::QueryResponse {
            applied_index: 3,
            result: Some(R::Rejection("bad query".into())),
        });
        assert_eq!(no.result, Err("bad query".to_string()));
    }

    #[test]
    fn status_turns_proto_zeroes_and_empties_into_none() {
        let status = NodeStatus::from(proto::StatusResponse {
            id: 2,
            role: "follower".into(),
            leader_id: 0,
            term: 4,
            commit_index: 10,
            applied_index: 9,
            members: vec![proto::Member {
                id: 2,
                address: "127.0.0.1:7002".into(),
                role: "learner".into(),
                plan: "stay".into(),
                match_index: 7,
            }],
            plugin_sha256: "ab".into(),
            plugin_version: String::new(),
            snapshot_index: 5,
            alarm: String::new(),
            log_format: 0,
            upgrades: vec![proto::Upgrade {
                index: 6,
                sha256: "cd".into(),
                timestamp_ms: 1,
                version: "2.0".into(),
            }],
        });
        assert_eq!(status.leader_id, None);
        assert_eq!(status.plugin_version, None);
        assert_eq!(status.alarm, None);
        assert_eq!(status.upgrades[0].version.as_deref(), Some("2.0"));
        assert_eq!(
            status.members,
            vec![Member {
                id: 2,
                address: "127.0.0.1:7002".into(),
                role: "learner".into(),
                plan: "stay".into(),
                match_index: Some(7),
                lag: Some(3),
            }]
        );
    }
}
