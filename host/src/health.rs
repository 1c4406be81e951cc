//! The standard gRPC health service (`grpc.health.v1.Health`) and server reflection, for
//! load balancers, orchestrators and grpcurl.
//!
//! Health is fed from the node's own status twice a second: `SERVING` while the node knows a
//! leader and has applied everything it knows is committed (it can answer reads and take
//! writes now), `NOT_SERVING` otherwise (an election, a cut-off node, a node catching up). The
//! whole server ("") and the `riteraft.v1.Client` service report the same; the `Raft` service
//! is between nodes and always reports `SERVING` while the process runs.

use std::time::Duration;

use riteraft_proto::client_server::ClientServer;
use riteraft_proto::raft_server::RaftServer;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::{HealthReporter, health_reporter};
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

use crate::grpc_services::NodeService;
use crate::node::{NodeHandle, Request};

/// How often the health status is brought up to date.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The health service, and a task (on the current runtime) that keeps it up to date from
/// `node` until the node stops.
pub fn health_service(node: NodeHandle) -> HealthServer<impl Health> {
    let (reporter, service) = health_reporter();
    tokio::spawn(report(node, reporter));
    service
}

/// The reflection service: `riteraft.proto` and the health service's own.
pub fn reflection_service()
-> Result<ServerReflectionServer<impl ServerReflection>, tonic_reflection::server::Error> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(riteraft_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

async fn report(node: NodeHandle, reporter: HealthReporter) {
    reporter.set_serving::<RaftServer<NodeService>>().await;
    let mut last = None;
    loop {
        let status = match node.call(|reply| Request::Status { reply }).await {
            Ok(status)
                if status.leader_id != 0
                    && status.applied_index >= status.commit_index
                    && status.diverged.is_none() =>
            {
                ServingStatus::Serving
            }
            Ok(_) => ServingStatus::NotServing,
            // Stopped: the process is on its way out.
            Err(_) => ServingStatus::NotServing,
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(<ClientServer<NodeService> as NamedService>::NAME, status)
                .await;
            last = Some(status);
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}
