//! The standard services operators' tools use: the gRPC health service follows whether a node
//! can serve, and server reflection lists every service (what grpcurl needs).

use riteraft_test_support::{Cluster, within};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use super::{ELECTION_LIMIT, TEST_LIMIT, followers, options};

/// What node at `channel` says of `service` ("" is the whole server).
async fn health(channel: &Channel, service: &str) -> Option<ServingStatus> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let answer = HealthClient::new(channel.clone())
        .check(request)
        .await
        .ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

#[tokio::test]
async fn health_follows_the_quorum_and_reflection_lists_every_service() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        for id in cluster.ids() {
            let channel = cluster.connector().channel(cluster.addr(id));
            for service in ["", "riteraft.v1.Client", "riteraft.v1.Raft"] {
                let what = format!("node {id} to report {service:?} SERVING");
                cluster
                    .wait_for(&what, ELECTION_LIMIT, async || {
                        (health(&channel, service).await == Some(ServingStatus::Serving))
                            .then_some(())
                    })
                    .await;
            }
        }

        let channel = cluster.connector().channel(cluster.addr(leader));
        let list = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::once(list))
            .await
            .expect("reflection answers")
            .into_inner();
        let answer = answers.message().await.unwrap().expect("one answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("not a list of services: {answer:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "riteraft.v1.Client",
                "riteraft.v1.Raft"
            ]
        );

        // Alone, the leader loses its quorum (check_quorum) and stops serving; the Raft
        // service, between nodes, stays up.
        for id in followers(&cluster, leader) {
            cluster.kill(id);
        }
        cluster
            .wait_for(
                "the lone node to report NOT_SERVING",
                ELECTION_LIMIT,
                async || {
                    (health(&channel, "").await == Some(ServingStatus::NotServing)).then_some(())
                },
            )
            .await;
        assert_eq!(
            health(&channel, "riteraft.v1.Client").await,
            Some(ServingStatus::NotServing)
        );
        assert_eq!(
            health(&channel, "riteraft.v1.Raft").await,
            Some(ServingStatus::Serving)
        );
    })
    .await;
}
