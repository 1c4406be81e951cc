//! The `Client` service: proposals, queries, status, membership, transfers and deploys.

use super::*;

impl NodeService {
    /// Replicates `command` and answers with the store's answer; a follower forwards it to the
    /// leader, unless it was `forwarded` to this node already. `Propose`, and each proposal of
    /// a `Pipeline`.
    pub(super) async fn propose_command(
        &self,
        command: Vec<u8>,
        forwarded: bool,
    ) -> Result<ProposeResponse, Status> {
        // Kept for a forward: the node takes the command it is given.
        let copy = command.clone();
        let result = self
            .node
            .call(|reply| NodeRequest::Propose { command, reply })
            .await;
        match result {
            Ok(applied) => {
                let result = match applied.outcome {
                    Ok(output) => propose_response::Result::Output(output),
                    Err(rejection) => propose_response::Result::Rejection(rejection.to_string()),
                };
                Ok(ProposeResponse {
                    result: Some(result),
                    index: applied.index,
                })
            }
            Err(NodeError::NotLeader { address, .. }) if !forwarded => {
                let mut client = self.leader_client(&address)?;
                client
                    .propose(mark_forwarded(ProposeRequest { command: copy }))
                    .await
                    .map(Response::into_inner)
                    .map_err(|status| unreached_leader(status, &address))
            }
            Err(error) => Err(status_of(error)),
        }
    }

    /// Runs a query on this node (linearizable ones confirm the read index with the leader).
    /// `Query`, and each query of a `Pipeline`.
    pub(super) async fn answer_query(&self, query: QueryRequest) -> Result<QueryResponse, Status> {
        let QueryRequest { request, stale } = query;
        let answered = self
            .node
            .call(|reply| NodeRequest::Query {
                request,
                stale,
                reply,
            })
            .await
            .map_err(status_of)?;
        let result = match answered.outcome {
            Ok(output) => query_response::Result::Output(output),
            Err(rejection) => query_response::Result::Rejection(rejection.to_string()),
        };
        Ok(QueryResponse {
            result: Some(result),
            applied_index: answered.applied_index,
        })
    }

    /// Calls the node at `address` back to check that it is the one asking to join.
    async fn confirm_joiner(&self, address: &str, join_token: Vec<u8>) -> Result<(), Status> {
        let refuse = |why: String| {
            Status::failed_precondition(format!(
                "cannot confirm that the node at {address} is asking to join: {why}"
            ))
        };
        let mut client = RaftClient::new(self.peer_channel(address).map_err(refuse)?);
        let request = IdentifyRequest {
            address: address.to_string(),
            join_token,
        };
        match tokio::time::timeout(IDENTIFY_TIMEOUT, client.identify(request)).await {
            Ok(Ok(answer)) if answer.get_ref().joining => Ok(()),
            Ok(Ok(_)) => Err(refuse("it says it is not".into())),
            Ok(Err(status)) => Err(refuse(status.message().to_string())),
            Err(_) => Err(refuse(format!("no answer within {IDENTIFY_TIMEOUT:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Client for NodeService {
    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        access::authorize(&request, Need::Role(Role::Write), "Propose")?;
        let forwarded = forwarded(&request);
        self.propose_command(request.into_inner().command, forwarded)
            .await
            .map(Response::new)
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        access::authorize(&request, Need::Role(Role::Read), "Query")?;
        self.answer_query(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        access::authorize(&request, Need::Role(Role::Read), "Status")?;
        let status = self
            .node
            .call(|reply| NodeRequest::Status { reply })
            .await
            .map_err(status_of)?;
        Ok(Response::new(StatusResponse {
            id: status.id,
            role: status.role.to_string(),
            leader_id: status.leader_id,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            members: members(&status.members, &status.learners, &status.match_index),
            plugin_sha256: hex::encode(status.module.sha256),
            plugin_version: status.module.version,
            snapshot_index: status.snapshot_index,
            alarm: status.diverged.unwrap_or_default(),
            log_format: LOG_FORMAT,
            upgrades: status
                .upgrades
                .into_iter()
                .map(|u| Upgrade {
                    index: u.index,
                    sha256: hex::encode(u.sha256),
                    timestamp_ms: u.timestamp_ms,
                    version: u.version,
                })
                .collect(),
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let JoinRequest {
            address,
            join_token,
            learner,
            replaces,
            log_format,
        } = request.get_ref().clone();
        let plan = LearnerPlan::for_join(learner, replaces).ok_or_else(|| {
            Status::invalid_argument("a node cannot both stay a learner and replace a voter")
        })?;
        let caller = access::authorize(&request, Need::Node, "Join")?;
        check_join_address(&address)?;
        if let Some(named) = access::node_address(&caller)
            && *named != *address
            && !forwarded(&request)
        {
            tracing::warn!(%address, certificate = %named, "refused a join for another address");
            return Err(Status::permission_denied(format!(
                "a node joins at the address its certificate names: {named}, not {address}"
            )));
        }
        // Refused before the call back: an old host asks in good faith, and gets the reason.
        if log_format < LOG_FORMAT {
            return Err(Status::failed_precondition(format!(
                "the joining node's riteraft-host is older than this cluster's: it reads log \
                 format {log_format}, and the log may hold entries of format {LOG_FORMAT} (several \
                 commands packed in one); run the same riteraft-host version (or a later one) on \
                 the joiner"
            )));
        }
        // Every node that handles a join calls the joiner back, the leader too when the join
        // was forwarded to it: a mark saying "checked already" would be one more thing to
        // trust, and the call back is cheap next to the membership change it guards.
        self.confirm_joiner(&address, join_token).await?;
        let result = self
            .node
            .call(|reply| NodeRequest::AddNode {
                address,
                plan,
                reply,
            })
            .await
            .map(|joined| {
                Response::new(JoinResponse {
                    id: joined.id,
                    members: members(&joined.members, &joined.learners, &BTreeMap::new()),
                })
            });
        or_forward!(self, request, result, |client, forwarded| client
            .join(forwarded))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        access::authorize(&request, Need::Role(Role::Admin), "Leave")?;
        let mut id = request.get_ref().node_id;
        if id == 0 {
            id = self
                .node
                .call(|reply| NodeRequest::Status { reply })
                .await
                .map_err(status_of)?
                .id;
        }
        // A leaving leader first hands leadership over (the node answers Busy meanwhile), then
        // the request goes to the new leader: retry until then, within a bound.
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        loop {
            let result = self
                .node
                .call(|reply| NodeRequest::RemoveNode { id, reply })
                .await;
            match result {
                Ok(()) => return Ok(Response::new(LeaveResponse {})),
                Err(NodeError::NotLeader { address, .. }) if !forwarded(&request) => {
                    let mut client = self.leader_client(&address)?;
                    return client
                        .leave(mark_forwarded(LeaveRequest { node_id: id }))
                        .await;
                }
                Err(NodeError::Busy(_) | NodeError::NoLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(status_of(error)),
            }
        }
    }

    async fn deploy(
        &self,
        request: Request<Streaming<DeployChunk>>,
    ) -> Result<Response<DeployResponse>, Status> {
        let upload = self.receive_deploy(request, "Deploy").await?;
        self.deploy_unwatched(upload).await.map(Response::new)
    }

    type PipelineStream = pipeline::PipelineAnswers;

    async fn pipeline(
        &self,
        request: Request<Streaming<PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        // Any role may open one; each request is then checked for what it needs.
        access::authorize(&request, Need::Role(Role::Read), "Pipeline")?;
        Ok(Response::new(self.serve_pipeline(request)))
    }

    type DeployWatchStream = deploys::DeployEvents;

    async fn deploy_watch(
        &self,
        request: Request<Streaming<DeployChunk>>,
    ) -> Result<Response<Self::DeployWatchStream>, Status> {
        let upload = self.receive_deploy(request, "DeployWatch").await?;
        Ok(Response::new(self.deploy_watched(upload)))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        access::authorize(&request, Need::Role(Role::Admin), "TransferLeader")?;
        let to = request.get_ref().to;
        let result = self
            .node
            .call(|reply| NodeRequest::TransferLeader { to, reply })
            .await
            .map(|()| Response::new(TransferLeaderResponse {}));
        or_forward!(self, request, result, |client, forwarded| client
            .transfer_leader(forwarded))
    }
}

/// A joiner's address must be one that others can dial: `IP:PORT` with a real port and a
/// specific IP (`0.0.0.0` names no one).
fn check_join_address(address: &str) -> Result<(), Status> {
    let bad = |why: &str| {
        Status::invalid_argument(format!("the joining node's address {address:?} {why}"))
    };
    let parsed: std::net::SocketAddr = address.parse().map_err(|_| bad("is not IP:PORT"))?;
    if parsed.port() == 0 {
        return Err(bad("has port 0, which no one can dial"));
    }
    if parsed.ip().is_unspecified() {
        return Err(bad("has an unspecified IP, which names no node"));
    }
    Ok(())
}

/// The members as the protocol lists them: each with its role, its plan if a learner, and
/// the index the leader knows it holds (where known).
fn members(
    members: &BTreeMap<u64, String>,
    learners: &BTreeMap<u64, LearnerPlan>,
    match_index: &BTreeMap<u64, u64>,
) -> Vec<Member> {
    members
        .iter()
        .map(|(id, address)| {
            let (role, plan) = match learners.get(id) {
                None => ("voter", String::new()),
                Some(LearnerPlan::Promote) => ("learner", "promote".into()),
                Some(LearnerPlan::Stay) => ("learner", "stay".into()),
                Some(LearnerPlan::Replace { replaces }) => {
                    ("learner", format!("replace {replaces}"))
                }
            };
            Member {
                id: *id,
                address: address.clone(),
                role: role.into(),
                plan,
                match_index: match_index.get(id).copied().unwrap_or(0),
            }
        })
        .collect()
}
