//! The library against fake nodes (see riteraft-test-support's `fake_node`): answers, failover,
//! retries and their bounds, and mutual TLS.

use std::time::{Duration, Instant};

use riteraft_client::proto::DialError;
use riteraft_client::tls::{ClientTls, Role, TlsFiles};
use riteraft_client::{Applied, Client, ClientError, Consistency, DialOptions};
use riteraft_proto::certs;
use riteraft_test_support::fake_node::{BIG, Fake, dead_address, serve, serve_tls};
use tonic::{Code, Status};

/// A bound for calls that should fail fast: generous for a loaded 2-core machine, far below the
/// default 10 s timeout, so a test that waits for the timeout instead fails.
const FAST: Duration = Duration::from_secs(3);

#[tokio::test]
async fn proposals_and_queries_reach_the_store() {
    let node = Fake::new(1);
    let client = Client::connect([serve(node.clone()).await]).unwrap();

    let applied = client.propose("put a 1").await.unwrap();
    assert_eq!(
        applied,
        Applied {
            index: 1,
            result: Ok(b"ok put a 1".to_vec())
        }
    );
    let answer = client.query("get a", Consistency::Stale).await.unwrap();
    assert_eq!(answer.applied_index, 1);
    assert_eq!(answer.result, Ok(b"get a from node 1 (stale)".to_vec()));
    let answer = client
        .query("get a", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(answer.result, Ok(b"get a from node 1".to_vec()));
    assert_eq!(
        node.log(),
        [
            "propose put a 1",
            "query get a stale=true",
            "query get a stale=false"
        ]
    );
}

#[tokio::test]
async fn a_rejection_is_an_answer_not_an_error() {
    let client = Client::connect([serve(Fake::new(1)).await]).unwrap();
    let applied = client.propose("reject no such key").await.unwrap();
    assert_eq!(applied.index, 1);
    assert_eq!(applied.result, Err("no such key".to_string()));
    let answer = client
        .query("reject bad query", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(answer.result, Err("bad query".to_string()));
}

#[tokio::test]
async fn fails_over_past_a_dead_node() {
    let node = Fake::new(2);
    let client = Client::connect([dead_address(), serve(node.clone()).await]).unwrap();
    let started = Instant::now();
    let applied = client.propose("put a 1").await.unwrap();
    assert_eq!(applied.result, Ok(b"ok put a 1".to_vec()));
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
    assert_eq!(node.calls(), 1);
}

#[tokio::test]
async fn the_next_call_starts_at_the_node_that_answered() {
    let no_leader = Fake::new(1);
    no_leader.fail_always(Code::Unavailable);
    let good = Fake::new(2);
    let client =
        Client::connect([serve(no_leader.clone()).await, serve(good.clone()).await]).unwrap();

    client.propose("one").await.unwrap();
    assert_eq!((no_leader.calls(), good.calls()), (1, 1));
    client.propose("two").await.unwrap();
    client.status().await.unwrap();
    // Clones share the memory of the last good node.
    client.clone().query("x", Consistency::Stale).await.unwrap();
    assert_eq!((no_leader.calls(), good.calls()), (1, 4));
}

#[tokio::test]
async fn waits_out_an_election() {
    let node = Fake::new(1);
    node.fail_next([
        Status::unavailable("no leader"),
        Status::unavailable("no leader"),
    ]);
    let client = Client::connect([serve(node.clone()).await]).unwrap();
    let applied = client.propose("put a 1").await.unwrap();
    assert_eq!(applied.result, Ok(b"ok put a 1".to_vec()));
    assert_eq!(node.calls(), 3);
}

#[tokio::test]
async fn gives_up_at_once_when_no_node_is_reachable() {
    let dead = [dead_address(), dead_address()];
    let client = Client::connect(&dead).unwrap();
    let started = Instant::now();
    let error = client.propose("put a 1").await.unwrap_err();
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
    match &error {
        ClientError::NoNodeReachable { tried, last } => {
            assert_eq!(tried, &dead);
            assert!(last.starts_with(&dead[1]), "{last}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains("check that the nodes are running"),
        "{error}"
    );
}

#[tokio::test]
async fn no_leader_is_bounded_by_the_timeout() {
    let node = Fake::new(1);
    node.fail_always(Code::Unavailable);
    let client = Client::connect([serve(node.clone()).await])
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = client.propose("put a 1").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&error, ClientError::Unavailable(m) if m.contains("scripted to fail")),
        "{error:?}"
    );
    assert!(elapsed < FAST, "{elapsed:?}");
    // 50 + 100 ms of backoff fit in 300 ms, the next 200 ms pause does not.
    assert!(node.calls() >= 2, "{}", node.calls());
}

#[tokio::test]
async fn a_write_past_its_deadline_is_not_sent_again() {
    let cut_off = Fake::new(1);
    cut_off.fail_always(Code::DeadlineExceeded);
    let good = Fake::new(2);
    let client =
        Client::connect([serve(cut_off.clone()).await, serve(good.clone()).await]).unwrap();

    let error = client.propose("put a 1").await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Timeout(m) if m.contains("may still be applied")),
        "{error:?}"
    );
    assert_eq!(
        good.calls(),
        0,
        "a write that may commit must not be resent"
    );

    // A read is harmless to resend: it goes on to the next node.
    let answer = client
        .query("get a", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(answer.result, Ok(b"get a from node 2".to_vec()));
}

#[tokio::test]
async fn a_slow_write_times_out_saying_it_may_still_apply() {
    let node = Fake::new(1);
    node.delay_proposals(Duration::from_secs(30));
    let client = Client::connect([serve(node.clone()).await])
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let error = client.propose("put a 1").await.unwrap_err();
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
    assert!(
        matches!(&error, ClientError::Timeout(m) if m.contains("may still be applied")),
        "{error:?}"
    );
    assert_eq!(node.calls(), 1);
}

#[tokio::test]
async fn aborted_is_retried_once() {
    let node = Fake::new(1);
    node.fail_next([Status::aborted("leader changed")]);
    let client = Client::connect([serve(node.clone()).await]).unwrap();
    client.propose("put a 1").await.unwrap();
    assert_eq!(node.calls(), 2);

    let always = Fake::new(1);
    always.fail_always(Code::Aborted);
    let client = Client::connect([serve(always.clone()).await]).unwrap();
    let error = client.propose("put a 1").await.unwrap_err();
    assert!(matches!(error, ClientError::Aborted(_)), "{error:?}");
    assert_eq!(always.calls(), 2);
}

#[tokio::test]
async fn refusals_are_returned_as_they_are() {
    let node = Fake::new(1);
    node.fail_next([
        Status::invalid_argument("command too large"),
        Status::failed_precondition("no node 7"),
        Status::internal("bug"),
    ]);
    let other = Fake::new(2);
    let client = Client::connect([serve(node.clone()).await, serve(other.clone()).await]).unwrap();
    let error = client.propose("x").await.unwrap_err();
    assert!(matches!(error, ClientError::InvalidArgument(ref m) if m == "command too large"));
    let error = client.leave(7).await.unwrap_err();
    assert!(matches!(error, ClientError::FailedPrecondition(ref m) if m == "no node 7"));
    let error = client.status().await.unwrap_err();
    assert!(matches!(error, ClientError::Other(ref s) if s.code() == Code::Internal));
    assert_eq!(
        other.calls(),
        0,
        "a refusal is an answer, not a reason to fail over"
    );
}

#[tokio::test]
async fn status_of_asks_that_node_only() {
    let first = Fake::new(1);
    let second = Fake::new(2);
    let first_address = serve(first.clone()).await;
    let second_address = serve(second.clone()).await;
    let client = Client::connect([&first_address]).unwrap();

    let status = client.status().await.unwrap();
    assert_eq!((status.id, status.leader_id), (1, Some(1)));
    assert_eq!(status.upgrades[0].version.as_deref(), Some("2.0"));
    // Not one of the client's addresses: still fine.
    let status = client
        .status_of(&format!("http://{second_address}"))
        .await
        .unwrap();
    assert_eq!((status.id, status.role.as_str()), (2, "follower"));
    assert_eq!((first.calls(), second.calls()), (1, 1));

    let error = client.status_of(&dead_address()).await.unwrap_err();
    assert!(
        matches!(error, ClientError::NoNodeReachable { .. }),
        "{error:?}"
    );
    assert_eq!(first.calls(), 1, "status_of never fails over");
}

#[tokio::test]
async fn leave_without_an_id_never_fails_over() {
    let node = Fake::new(2);
    let client = Client::connect([dead_address(), serve(node.clone()).await]).unwrap();
    // 0 means "the node contacted": sending it on would remove the wrong node.
    let error = client.leave(0).await.unwrap_err();
    assert!(
        matches!(error, ClientError::NoNodeReachable { .. }),
        "{error:?}"
    );
    assert_eq!(node.calls(), 0);
    // An explicit id may go to any node.
    client.leave(3).await.unwrap();
    client.transfer_leader(2).await.unwrap();
    let joined = client.join("127.0.0.1:7009", b"token").await.unwrap();
    assert_eq!(joined.id, 9);
    assert_eq!(node.log(), ["leave 3", "transfer 2", "join 127.0.0.1:7009"]);
}

#[tokio::test]
async fn messages_above_four_mib_get_through() {
    let client = Client::connect([serve(Fake::new(1)).await]).unwrap();
    let answer = client.query("big", Consistency::Stale).await.unwrap();
    assert_eq!(answer.result.unwrap().len(), BIG);
    let applied = client.propose(vec![b'y'; BIG]).await.unwrap();
    assert_eq!(applied.result, Ok(format!("ok {BIG} bytes").into_bytes()));
}

#[test]
fn bad_addresses_are_refused_up_front() {
    let error = Client::connect(["127.0.0.1:7001", "nowhere"]).unwrap_err();
    assert!(
        matches!(&error, ClientError::BadAddress(m) if m.contains("\"nowhere\"") && m.contains("port is missing")),
        "{error:?}"
    );
    let none: [&str; 0] = [];
    assert!(matches!(
        Client::connect(none).unwrap_err(),
        ClientError::BadAddress(_)
    ));
}

/// A client of `addresses` with the TLS identity `files`.
fn tls_client(files: TlsFiles, addresses: &[String]) -> Client {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .tls(ClientTls::load(files).unwrap())
        .connect(addresses)
        .unwrap()
}

#[tokio::test]
async fn a_tls_client_talks_to_a_tls_node() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::write_test_pki(
        dir.path(),
        &["127.0.0.1:7001".into()],
        &[("alice".into(), Role::Write)],
    )
    .unwrap();
    let node = serve_tls(Fake::new(7), dir.path(), "127.0.0.1:7001", &pki.ca).await;
    let client = tls_client(pki.clients[0].clone(), &[node.to_string()]);
    assert_eq!(client.status().await.unwrap().id, 7);
    assert_eq!(client.propose("put a 1").await.unwrap().index, 1);
    // The https:// alias dials the same way.
    let status = client.status_of(&format!("https://{node}")).await.unwrap();
    assert_eq!(status.id, 7);
}

#[tokio::test]
async fn a_refused_client_certificate_is_a_tls_error_not_a_lost_write() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let pki = certs::write_test_pki(ours.path(), &["127.0.0.1:7001".into()], &[]).unwrap();
    let stranger =
        certs::write_test_pki(theirs.path(), &[], &[("eve".into(), Role::Admin)]).unwrap();
    let node = serve_tls(Fake::new(7), ours.path(), "127.0.0.1:7001", &pki.ca).await;
    // Eve trusts the node's CA, but her certificate is from another one.
    let eve = TlsFiles {
        ca: pki.ca.clone(),
        ..stranger.clients[0].clone()
    };
    // A node that is down as well does not hide the TLS error.
    let client = tls_client(eve, &[dead_address(), node.to_string()]);
    let started = Instant::now();
    for error in [
        client.propose("put a 1").await.unwrap_err(),
        client.status().await.unwrap_err(),
    ] {
        let message = error.to_string();
        assert!(matches!(error, ClientError::Tls(_)), "{error:?}");
        assert!(message.contains(&node.to_string()), "{message}");
        assert!(
            message.contains("refused this side's certificate"),
            "{message}"
        );
    }
    // Given up after one pass, not retried until the timeout.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_node_from_another_ca_is_a_tls_error() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let pki = certs::write_test_pki(ours.path(), &[], &[("alice".into(), Role::Read)]).unwrap();
    let other = certs::write_test_pki(theirs.path(), &["127.0.0.1:7001".into()], &[]).unwrap();
    let node = serve_tls(Fake::new(7), theirs.path(), "127.0.0.1:7001", &other.ca).await;
    let client = tls_client(pki.clients[0].clone(), &[node.to_string()]);
    let error = client.status().await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ClientError::Tls(_)), "{error:?}");
    assert!(
        message.contains("not signed by the CA this side trusts"),
        "{message}"
    );

    // The eager dial says the same.
    let options = DialOptions {
        tls: Some(ClientTls::load(pki.clients[0].clone()).unwrap()),
        ..DialOptions::default()
    };
    let error = riteraft_client::dial(&node.to_string(), &options)
        .await
        .unwrap_err();
    assert!(matches!(error, DialError::Tls(_)), "{error:?}");
    // And a node that is down is still just down.
    let error = riteraft_client::dial(&dead_address(), &options)
        .await
        .unwrap_err();
    assert!(matches!(error, DialError::Unreachable { .. }), "{error:?}");
}

#[tokio::test]
async fn a_read_moves_on_from_a_node_that_does_not_answer_in_time() {
    let stuck = Fake::new(1);
    stuck.delay_queries(Duration::from_secs(30));
    let client = Client::builder()
        .read_attempt_timeout(Duration::from_millis(300))
        .connect([serve(stuck.clone()).await, serve(Fake::new(2)).await])
        .unwrap();
    let started = Instant::now();
    let answer = client
        .query("get a", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(answer.result, Ok(b"get a from node 2".to_vec()));
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
    // A write is not given up on that way: it may still apply.
    let slow = Fake::new(3);
    slow.delay_proposals(Duration::from_millis(800));
    let client = Client::builder()
        .read_attempt_timeout(Duration::from_millis(300))
        .connect([serve(slow).await])
        .unwrap();
    let applied = client.propose("put a 1").await.unwrap();
    assert_eq!(applied.result, Ok(b"ok put a 1".to_vec()));
}

#[tokio::test]
async fn concurrent_requests_share_one_stream_and_each_gets_its_own_answer() {
    let node = Fake::new(1);
    let client = Client::connect([serve(node.clone()).await]).unwrap();
    let calls = (0..200).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let applied = client.propose(format!("put k{i} {i}")).await.unwrap();
            assert_eq!(applied.result, Ok(format!("ok put k{i} {i}").into_bytes()));
            let answer = client
                .query(format!("get k{i}"), Consistency::Linearizable)
                .await
                .unwrap();
            assert_eq!(
                answer.result,
                Ok(format!("get k{i} from node 1").into_bytes())
            );
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
    assert_eq!(node.pipelines(), 1, "every call went on one stream");
    assert_eq!(node.log().len(), 400);
}

#[tokio::test]
async fn a_node_without_pipeline_is_sent_unary_calls() {
    let node = Fake::new(1);
    node.without_pipeline();
    let client = Client::connect([serve(node.clone()).await]).unwrap();
    for i in 0..3 {
        let applied = client.propose(format!("put a {i}")).await.unwrap();
        assert_eq!(applied.result, Ok(format!("ok put a {i}").into_bytes()));
    }
    assert_eq!(node.pipelines(), 0);
    assert_eq!(node.log().len(), 3);
}

#[tokio::test]
async fn unary_calls_when_the_pipeline_is_turned_off() {
    let node = Fake::new(1);
    let client = Client::builder()
        .pipelined(false)
        .connect([serve(node.clone()).await])
        .unwrap();
    client.propose("put a 1").await.unwrap();
    client.query("get a", Consistency::Stale).await.unwrap();
    assert_eq!(node.pipelines(), 0);
}
