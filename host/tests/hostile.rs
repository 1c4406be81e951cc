//! The trust boundary, tried from outside and from inside on real `riteraft-host` processes
//! running mutual TLS as the README sets them up: outsiders (no certificate, another CA's, a
//! client posing as a node), each client role against each call, a member speaking for
//! another, and malformed content from a member. After each attack every node must be alive,
//! the acknowledged writes intact and identical on every replica, and the cluster serving.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Entry, Message, MessageType, Snapshot};
use riteraft_proto::certs::{client_files, node_files, write_test_pki};
use riteraft_proto::client_client::ClientClient;
use riteraft_proto::raft_client::RaftClient;
use riteraft_proto::tls::{ClientTls, Role, TlsFiles, crypto_provider, load_pem};
use riteraft_proto::{
    DeployChunk, JoinRequest, LeaveRequest, PipelineRequest, ProposeRequest, QueryRequest,
    RaftBatch, SnapshotChunk, StatusRequest, TransferLeaderRequest, pipeline_request,
    pipeline_response,
};
use riteraft_proto::{DialOptions, dial_lazy};
use riteraft_test_support::{Cluster, ClusterOptions, within};
use tonic::Code;
use tonic::transport::Channel;

const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Longer than a node's own idle limit for uploads (10 s), so that the node, not the call,
/// ends a held-open upload.
const CALL: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(30);

fn options() -> ClusterOptions {
    ClusterOptions::new(env!("CARGO_BIN_EXE_riteraft-host"))
}

/// A channel to `addr` presenting the certificate in `files` (or plain HTTP/2 without).
fn channel(addr: SocketAddr, files: Option<TlsFiles>) -> Channel {
    let options = DialOptions {
        connect_timeout: Duration::from_secs(2),
        timeout: Some(CALL),
        tls: files.map(|files| ClientTls::load(files).expect("the test certificate loads")),
        expect_node: None,
    };
    dial_lazy(&addr.to_string(), &options).expect("a loopback address")
}

/// A raft client of node `to`, speaking with node `as_node`'s own certificate.
fn raft_as(cluster: &Cluster, as_node: u64, to: u64) -> RaftClient<Channel> {
    let files = node_files(&cluster.certs_dir(), &cluster.addr(as_node).to_string());
    RaftClient::new(channel(cluster.addr(to), Some(files)))
}

fn client_as(cluster: &Cluster, name: &str, to: u64) -> ClientClient<Channel> {
    ClientClient::new(channel(
        cluster.addr(to),
        Some(client_files(&cluster.certs_dir(), name)),
    ))
}

/// Sends `requests` on one `Pipeline` stream and returns each answer by id, a failure carried
/// in an answer as its status.
async fn pipelined(
    client: &mut ClientClient<Channel>,
    requests: Vec<PipelineRequest>,
) -> Result<Vec<(u64, Result<pipeline_response::Result, tonic::Status>)>, tonic::Status> {
    let count = requests.len();
    let mut answers = client
        .pipeline(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut got = Vec::new();
    while let Some(answer) = answers.message().await? {
        let result = match answer.result.expect("every answer carries a result") {
            pipeline_response::Result::Failure(failure) => Err(tonic::Status::new(
                Code::from(failure.code),
                failure.message,
            )),
            result => Ok(result),
        };
        got.push((answer.id, result));
    }
    assert_eq!(got.len(), count, "one answer per request: {got:?}");
    got.sort_by_key(|(id, _)| *id);
    Ok(got)
}

fn raft_message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = to;
    message.term = term;
    message
}

fn batch(messages: &[Message]) -> RaftBatch {
    RaftBatch {
        messages: messages
            .iter()
            .map(|m| m.write_to_bytes().expect("encodes"))
            .collect(),
        removed_at_index: 0,
    }
}

async fn put(cluster: &Cluster, node: u64, key: &str) {
    let answer = cluster
        .propose(node, &format!("put {key} v-{key}"))
        .await
        .unwrap_or_else(|e| panic!("put {key} through node {node}: {e}"));
    assert!(answer.is_ok(), "put {key}: {answer:?}");
}

/// Every node is running, has applied what the leader committed, and answers every key in
/// `keys` with its acknowledged value (read locally, so each replica is checked).
async fn assert_intact(cluster: &Cluster, keys: &[String]) {
    for id in cluster.ids() {
        assert!(cluster.is_running(id), "node {id} died: see its log above");
    }
    cluster.wait_caught_up(CONVERGE).await;
    // Every replica holds the same keys and values, not only the ones checked below.
    let mut dumps = Vec::new();
    for id in cluster.ids() {
        let all = cluster.query(id, "keys", true).await;
        dumps.push((id, all.map_err(|e| e.to_string())));
    }
    assert!(
        dumps.windows(2).all(|pair| pair[0].1 == pair[1].1),
        "the replicas differ: {dumps:?}"
    );
    for id in cluster.ids() {
        for key in keys {
            let answer = cluster.query(id, &format!("get {key}"), true).await;
            assert_eq!(
                answer.map_err(|e| e.to_string()),
                Ok(Ok(format!("v-{key}"))),
                "get {key} on node {id}"
            );
        }
    }
    let leader = cluster.wait_for_leader(CONVERGE).await;
    put(cluster, leader, "after-the-attack").await;
}

/// Writes a few keys through the leader: what the attacks must not lose.
async fn acknowledged_writes(cluster: &Cluster) -> Vec<String> {
    let leader = cluster.wait_for_leader(CONVERGE).await;
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    for key in &keys {
        put(cluster, leader, key).await;
    }
    keys
}

/// Whether the node at `addr` answers HTTP/2 over a TLS connection that presents no client
/// certificate (trusting the cluster's CA, so the node's certificate is not the problem).
async fn speaks_without_a_certificate(cluster: &Cluster, addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, _, roots) = load_pem(&client_files(&cluster.certs_dir(), "admin")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    // With TLS 1.3 the client may finish its side of the handshake before the node refuses.
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    if tls.write_all(preface).await.is_err() {
        return false;
    }
    let mut answer = [0u8; 9];
    matches!(
        tokio::time::timeout(CALL, tls.read(&mut answer)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_without_the_clusters_certificates_are_refused() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let keys = acknowledged_writes(&cluster).await;
        let leader = cluster.wait_for_leader(CONVERGE).await;
        let addr = cluster.addr(leader);

        // No TLS at all.
        let status = ClientClient::new(channel(addr, None))
            .status(StatusRequest {})
            .await
            .unwrap_err();
        assert_ne!(
            status.code(),
            Code::Ok,
            "plain HTTP/2 got through: {status:?}"
        );

        // TLS that trusts the cluster's CA but presents no certificate.
        assert!(
            !speaks_without_a_certificate(&cluster, addr).await,
            "a TLS connection without a client certificate was served"
        );

        // A certificate of another CA, even one that names a member.
        let other = tempfile::tempdir().unwrap();
        let pki = write_test_pki(
            other.path(),
            &[addr.to_string()],
            &[("admin".into(), Role::Admin)],
        )
        .unwrap();
        let stranger = ClientClient::new(channel(addr, Some(pki.clients[0].clone())))
            .propose(ProposeRequest {
                command: b"put k0 stolen".to_vec(),
            })
            .await
            .unwrap_err();
        assert_ne!(stranger.code(), Code::Ok);
        // ... presented to a node that the client itself trusts: the node refuses it.
        let foreign_client = TlsFiles {
            ca: cluster.certs_dir().join("ca.pem"),
            ..pki.clients[0].clone()
        };
        let refused = ClientClient::new(channel(addr, Some(foreign_client)))
            .status(StatusRequest {})
            .await
            .unwrap_err();
        assert_ne!(refused.code(), Code::Ok);
        let foreign_node = TlsFiles {
            ca: cluster.certs_dir().join("ca.pem"),
            ..pki.nodes[0].clone()
        };
        let forged = RaftClient::new(channel(addr, Some(foreign_node)))
            .send(batch(&[raft_message(
                MessageType::MsgHeartbeat,
                2,
                leader,
                99,
            )]))
            .await
            .unwrap_err();
        assert_ne!(forged.code(), Code::Ok);

        // A client certificate of the right CA posing as a node.
        let mut admin_as_node = RaftClient::new(channel(
            addr,
            Some(client_files(&cluster.certs_dir(), "admin")),
        ));
        let denied = admin_as_node
            .send(batch(&[raft_message(
                MessageType::MsgHeartbeat,
                2,
                leader,
                99,
            )]))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains("names no node"), "{denied:?}");
        let mut removal = batch(&[]);
        removal.removed_at_index = 1;
        let denied = admin_as_node.send(removal).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);

        assert_intact(&cluster, &keys).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_make_its_calls_and_no_others() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let keys = acknowledged_writes(&cluster).await;
        write_test_pki(
            &cluster.certs_dir(),
            &[],
            &[
                ("reader".into(), Role::Read),
                ("writer".into(), Role::Write),
            ],
        )
        .unwrap();
        let leader = cluster.wait_for_leader(CONVERGE).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();

        for (name, role) in [
            ("reader", Role::Read),
            ("writer", Role::Write),
            ("admin", Role::Admin),
        ] {
            let mut client = client_as(&cluster, name, leader);
            let allowed = |needed: Role, result: Result<(), tonic::Status>, call: &str| {
                if role >= needed {
                    assert!(result.is_ok(), "{name} may {call}: {result:?}");
                } else {
                    let status = result.unwrap_err();
                    assert_eq!(status.code(), Code::PermissionDenied, "{name} {call}");
                    assert!(
                        status
                            .message()
                            .contains(&format!("needs the {needed} role")),
                        "{name} {call}: {status:?}"
                    );
                }
            };
            let status = client.status(StatusRequest {}).await.map(drop);
            allowed(Role::Read, status, "Status");
            let query = client
                .query(QueryRequest {
                    request: b"get k0".to_vec(),
                    stale: false,
                })
                .await
                .map(drop);
            allowed(Role::Read, query, "Query");
            let propose = client
                .propose(ProposeRequest {
                    command: format!("put {name} v-{name}").into_bytes(),
                })
                .await
                .map(drop);
            allowed(Role::Write, propose, "Propose");
            // The same two, on one pipeline: each request is checked for its own role.
            let answers = pipelined(
                &mut client,
                vec![
                    PipelineRequest {
                        id: 1,
                        request: Some(pipeline_request::Request::Query(QueryRequest {
                            request: b"get k0".to_vec(),
                            stale: false,
                        })),
                    },
                    PipelineRequest {
                        id: 2,
                        request: Some(pipeline_request::Request::Propose(ProposeRequest {
                            command: format!("put p-{name} v-p-{name}").into_bytes(),
                        })),
                    },
                ],
            )
            .await
            .unwrap();
            let [(1, query), (2, propose)] = &answers[..] else {
                panic!("{answers:?}");
            };
            allowed(Role::Read, query.clone().map(drop), "Pipeline (query)");
            allowed(Role::Write, propose.clone().map(drop), "Pipeline (propose)");
            // Leadership stays where it is: a transfer to the leader itself is a no-op.
            let transfer = client
                .transfer_leader(TransferLeaderRequest { to: leader })
                .await
                .map(drop);
            allowed(Role::Admin, transfer, "TransferLeader");
            // A removal of a node that is not a member: refused by the node, not by the role.
            let leave = client.leave(LeaveRequest { node_id: 77 }).await.map(drop);
            match role {
                Role::Admin => assert_eq!(leave.unwrap_err().code(), Code::FailedPrecondition),
                _ => allowed(Role::Admin, leave, "Leave"),
            }
            let deploy = client
                .deploy(tokio_stream::iter(vec![DeployChunk {
                    data: b"not wasm".to_vec(),
                    dry_run: true,
                }]))
                .await
                .map(drop);
            match role {
                Role::Admin => assert_eq!(deploy.unwrap_err().code(), Code::FailedPrecondition),
                _ => allowed(Role::Admin, deploy, "Deploy"),
            }
            // Joining is for nodes only, whatever the role.
            let join = client
                .join(JoinRequest {
                    address: "127.0.0.1:9".into(),
                    join_token: vec![],
                    ..JoinRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(join.code(), Code::PermissionDenied, "{name} Join");
        }
        // Through a follower, a write is forwarded, and a reader still cannot write.
        let denied = client_as(&cluster, "reader", follower)
            .propose(ProposeRequest {
                command: b"put k0 x".to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        // A pipelined request with nothing in it is refused on its own; the stream goes on and
        // answers the next.
        let answers = pipelined(
            &mut client_as(&cluster, "writer", follower),
            vec![
                PipelineRequest {
                    id: 7,
                    request: None,
                },
                PipelineRequest {
                    id: 8,
                    request: Some(pipeline_request::Request::Propose(ProposeRequest {
                        command: b"put p-forwarded v-p-forwarded".to_vec(),
                    })),
                },
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            answers[0].1.as_ref().unwrap_err().code(),
            Code::InvalidArgument,
            "{answers:?}"
        );
        assert!(
            matches!(&answers[1].1, Ok(pipeline_response::Result::Propose(_))),
            "a follower forwards a pipelined write: {answers:?}"
        );
        let mut keys = keys;
        keys.extend(["writer".to_string(), "admin".to_string()]);
        keys.extend(["p-writer", "p-admin", "p-forwarded"].map(String::from));
        assert_intact(&cluster, &keys).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_forged_messages_from_members_change_nothing() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let keys = acknowledged_writes(&cluster).await;
        let leader = cluster.wait_for_leader(CONVERGE).await;
        let followers: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let (a, b) = (followers[0], followers[1]);
        let term = cluster.status(leader).await.unwrap().term;
        let applied = cluster.status(a).await.unwrap().applied_index;

        // A proposal of 24 garbage bytes, and an empty one, to the leader (from a member).
        let mut garbage = raft_message(MessageType::MsgPropose, a, leader, 0);
        garbage.entries = vec![Entry {
            data: vec![0xAB; 24].into(),
            ..Default::default()
        }]
        .into();
        let empty = raft_message(MessageType::MsgPropose, a, leader, 0);
        raft_as(&cluster, a, leader)
            .send(batch(&[garbage, empty]))
            .await
            .expect("the batch is taken, its messages refused one by one");

        // Member `a` writes in the leader's name to `b`: an append no client made.
        let mut forged = raft_message(MessageType::MsgAppend, leader, b, term);
        forged.index = applied;
        forged.log_term = term;
        forged.commit = applied + 1;
        forged.entries = vec![Entry {
            index: applied + 1,
            term,
            data: vec![1, 2, 3].into(),
            ..Default::default()
        }]
        .into();
        raft_as(&cluster, a, b)
            .send(batch(&[forged]))
            .await
            .unwrap();

        // Member `a` in its own name: leader traffic in the leader's term, and a transfer
        // that the leader did not ask for (raft-rs would start an election on it).
        let mut second_leader = raft_message(MessageType::MsgHeartbeat, a, b, term);
        second_leader.commit = applied;
        let timeout_now = raft_message(MessageType::MsgTimeoutNow, a, b, term);
        raft_as(&cluster, a, b)
            .send(batch(&[second_leader, timeout_now]))
            .await
            .unwrap();

        // The leader's own certificate, entries that skip indexes.
        let mut skipping = raft_message(MessageType::MsgAppend, leader, b, term);
        skipping.index = applied;
        skipping.log_term = term;
        skipping.entries = vec![
            Entry {
                index: applied + 1,
                term,
                ..Default::default()
            },
            Entry {
                index: applied + 5,
                term,
                ..Default::default()
            },
        ]
        .into();
        raft_as(&cluster, leader, b)
            .send(batch(&[skipping]))
            .await
            .unwrap();

        // A read-index request without its context, and an ack past the leader's log.
        let no_context = raft_message(MessageType::MsgReadIndex, a, leader, 0);
        let mut ack = raft_message(MessageType::MsgAppendResponse, a, leader, term);
        ack.index = u64::MAX / 2;
        raft_as(&cluster, a, leader)
            .send(batch(&[no_context, ack]))
            .await
            .unwrap();

        // A removal notice from a member that does not lead: checked with the leader, ignored.
        let mut removal = batch(&[]);
        removal.removed_at_index = applied;
        raft_as(&cluster, a, b).send(removal).await.unwrap();

        // Snapshots: garbage data, a 4 GiB announcement with a few bytes, an old one.
        let snapshot_of = |index: u64, data_len: u64, data: Vec<u8>| {
            let mut message = raft_message(MessageType::MsgSnapshot, leader, b, term);
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = index;
            snapshot.mut_metadata().term = term;
            snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
            message.set_snapshot(snapshot);
            vec![
                SnapshotChunk {
                    message: message.write_to_bytes().unwrap(),
                    data_len,
                    data: vec![],
                },
                SnapshotChunk {
                    message: vec![],
                    data_len: 0,
                    data,
                },
            ]
        };
        let mut as_leader = raft_as(&cluster, leader, b);
        let refused = as_leader
            .install_snapshot(tokio_stream::iter(snapshot_of(
                applied + 100,
                24,
                vec![7; 24],
            )))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("unusable"), "{refused:?}");
        let refused = as_leader
            .install_snapshot(tokio_stream::iter(snapshot_of(
                applied + 100,
                4 << 30,
                vec![7; 64],
            )))
            .await
            .unwrap_err();
        assert!(refused.message().contains("truncated"), "{refused:?}");
        // In the same chunk as a batch: only InstallSnapshot takes snapshots.
        let inline = as_leader
            .send(batch(&[raft_message(
                MessageType::MsgSnapshot,
                leader,
                b,
                term,
            )]))
            .await
            .unwrap_err();
        assert_eq!(inline.code(), Code::InvalidArgument);

        // Let the removal check run its course (three checks a second apart).
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_intact(&cluster, &keys).await;
        let refusals: usize = cluster
            .ids()
            .iter()
            .map(|id| cluster.log(*id).matches("refused a raft message").count())
            .sum();
        assert!(refusals >= 2, "the refusals are logged");
        assert!(cluster.log(b).contains("no leader confirms"));
        assert!(
            !cluster.log(b).contains("received MsgTimeoutNow"),
            "an unasked transfer started an election"
        );
        assert!(cluster.log(b).contains("certificate names"));
        let members = cluster.status(leader).await.unwrap().members.len();
        assert_eq!(members, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_must_come_from_the_node_named_and_uploads_are_bounded() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let keys = acknowledged_writes(&cluster).await;
        let leader = cluster.wait_for_leader(CONVERGE).await;
        let certs = cluster.certs_dir();
        // A node certificate for an address where nothing listens: the call back fails.
        let nobody = riteraft_test_support::free_addr().to_string();
        write_test_pki(&certs, std::slice::from_ref(&nobody), &[]).unwrap();
        let mut as_nobody = ClientClient::new(channel(
            cluster.addr(leader),
            Some(node_files(&certs, &nobody)),
        ));
        for _ in 0..3 {
            let refused = as_nobody
                .join(JoinRequest {
                    address: nobody.clone(),
                    join_token: vec![1; 16],
                    log_format: 2,
                    ..JoinRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
            assert!(refused.message().contains("cannot confirm"), "{refused:?}");
        }
        // A joiner whose host is older than packed log entries (it sends no `log_format`) is
        // told why, before anything else is asked of it.
        let refused = as_nobody
            .join(JoinRequest {
                address: nobody.clone(),
                join_token: vec![1; 16],
                ..JoinRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains("older than this cluster's"),
            "{refused:?}"
        );
        // Another address than the certificate names, and addresses no one can dial.
        let member = cluster.addr(leader).to_string();
        for (address, code) in [
            ("127.0.0.1:1".to_string(), Code::PermissionDenied),
            (member, Code::PermissionDenied),
            ("0.0.0.0:7001".to_string(), Code::InvalidArgument),
            ("127.0.0.1:0".to_string(), Code::InvalidArgument),
        ] {
            let refused = as_nobody
                .join(JoinRequest {
                    address,
                    join_token: vec![],
                    ..JoinRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), code, "{refused:?}");
        }
        assert_eq!(cluster.status(leader).await.unwrap().members.len(), 3);

        // Uploads held open: two at a time, the third refused; the held ones are dropped
        // after their idle limit.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (sender, receiver) = tokio::sync::mpsc::channel(1);
            sender
                .send(DeployChunk {
                    data: vec![0; 1 << 20],
                    dry_run: true,
                })
                .await
                .unwrap();
            let mut admin = client_as(&cluster, "admin", leader);
            held.push((
                sender,
                tokio::spawn(async move {
                    admin
                        .deploy(tokio_stream::wrappers::ReceiverStream::new(receiver))
                        .await
                }),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let refused = client_as(&cluster, "admin", leader)
            .deploy(tokio_stream::iter(vec![DeployChunk {
                data: vec![0; 16],
                dry_run: true,
            }]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        for (sender, call) in held {
            let ended = call.await.unwrap().unwrap_err();
            assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
            drop(sender);
        }
        assert_intact(&cluster, &keys).await;
    })
    .await;
}

#[test]
fn a_node_without_tls_refuses_a_non_loopback_address() {
    let plugin = riteraft_test_support::plugin("kv");
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_riteraft-host"))
        .arg("--plugin")
        .arg(&plugin)
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without TLS"), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert!(!Path::new(&dir.path().join("data")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ca_file_is_picked_up_without_a_restart() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(1, options()).await;
        let addr = cluster.addr(1);
        let other = tempfile::tempdir().unwrap();
        // The clients trust the node's (unchanged) server certificate through a copy of the
        // CA file, which is about to be replaced.
        let trusted = other.path().join("cluster-ca.pem");
        std::fs::copy(cluster.certs_dir().join("ca.pem"), &trusted).unwrap();
        let trusted_copy = trusted.clone();
        let old_admin = TlsFiles {
            ca: trusted.clone(),
            ..client_files(&cluster.certs_dir(), "admin")
        };
        let pki = write_test_pki(
            &other.path().join("new"),
            &[],
            &[("admin".into(), Role::Admin)],
        )
        .unwrap();
        let new_admin = TlsFiles {
            ca: trusted,
            ..pki.clients[0].clone()
        };
        let status_with = |files: TlsFiles| async move {
            ClientClient::new(channel(addr, Some(files)))
                .status(StatusRequest {})
                .await
        };
        assert!(status_with(old_admin.clone()).await.is_ok());
        assert!(status_with(new_admin.clone()).await.is_err());

        // Rotate the CA the node checks clients against: write the new one over the file.
        let node_ca = node_files(&cluster.certs_dir(), &addr.to_string()).ca;
        std::fs::copy(&pki.ca, &node_ca).unwrap();
        cluster
            .wait_for("the node to take the new CA", CONVERGE, async || {
                status_with(new_admin.clone()).await.ok()
            })
            .await;
        assert!(
            status_with(old_admin.clone()).await.is_err(),
            "the old CA is no longer trusted"
        );
        assert!(cluster.log(1).contains("TLS certificates reloaded"));

        // And back, on SIGHUP alone: the file keeps its modification time, so the node's
        // check for changed files does not see it.
        let modified = std::fs::metadata(&node_ca).unwrap().modified().unwrap();
        std::fs::copy(&trusted_copy, &node_ca).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&node_ca)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            status_with(old_admin.clone()).await.is_err(),
            "reloaded without being asked"
        );
        cluster.hangup(1);
        cluster
            .wait_for(
                "the node to take the old CA back on SIGHUP",
                CONVERGE,
                async || status_with(old_admin.clone()).await.ok(),
            )
            .await;

        // A broken file is refused, and the node keeps what it had.
        std::fs::write(&node_ca, b"not a certificate").unwrap();
        cluster
            .wait_for("the node to log the bad file", CONVERGE, async || {
                cluster
                    .log(1)
                    .contains("cannot reload the TLS certificates")
                    .then_some(())
            })
            .await;
        assert!(status_with(old_admin).await.is_ok());
        assert!(cluster.is_running(1));
    })
    .await;
}
