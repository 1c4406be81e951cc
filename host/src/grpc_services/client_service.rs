//! The `Client` service: proposals, queries, status, membership, transfers and deploys.

use super::*;

impl NodeService {
    /// Checks that `module` is a usable store (compiling it: about a second, so on a blocking
    /// thread), and with `dry_run` that it restores this node's current state.
    async fn validate(&self, module: &[u8], dry_run: bool) -> Result<DeployResponse, Status> {
        let plugins = self.plugins.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node runs a store built into the host (--builtin-kv); it cannot be replaced",
            )
        })?;
        let bytes = module.to_vec();
        let loaded = tokio::task::spawn_blocking({
            let plugins = plugins.clone();
            move || plugins.load_cached(&bytes)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let module = loaded.map_err(|e| {
            Status::failed_precondition(format!("the module is not a usable store: {e}"))
        })?;
        let sha256 = module.sha256_hex();
        if !dry_run {
            return Ok(DeployResponse {
                sha256,
                ..Default::default()
            });
        }
        let (snapshot, active) = self
            .node
            .call(|reply| NodeRequest::Snapshot { reply })
            .await
            .map_err(status_of)?;
        let tried = tokio::task::spawn_blocking(move || {
            let mut instance = plugins
                .instantiate(&module)
                .map_err(|e| format!("the module does not start: {e}"))?;
            instance
                .restore(&snapshot)
                .map_err(|e| format!("the module cannot restore the current state: {e}"))?;
            Ok::<_, String>((
                instance.version().unwrap_or_default().to_string(),
                snapshot.len(),
            ))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (version, state_bytes) = tried.map_err(Status::failed_precondition)?;
        let unchanged = hex::encode(active.sha256) == sha256;
        Ok(DeployResponse {
            message: format!(
                "dry run: the module loads and restores the current state ({state_bytes} bytes); \
                 nothing was committed"
            ),
            sha256,
            version,
            index: 0,
            unchanged,
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
        let command = request.get_ref().command.clone();
        let result = self
            .node
            .call(|reply| NodeRequest::Propose { command, reply })
            .await
            .map(|applied| {
                let result = match applied.outcome {
                    Ok(output) => propose_response::Result::Output(output),
                    Err(rejection) => propose_response::Result::Rejection(rejection.to_string()),
                };
                Response::new(ProposeResponse {
                    result: Some(result),
                    index: applied.index,
                })
            });
        or_forward!(self, request, result, |client, forwarded| client
            .propose(forwarded))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        access::authorize(&request, Need::Role(Role::Read), "Query")?;
        let QueryRequest { request, stale } = request.into_inner();
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
        Ok(Response::new(QueryResponse {
            result: Some(result),
            applied_index: answered.applied_index,
        }))
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
        access::authorize(&request, Need::Role(Role::Admin), "Deploy")?;
        let was_forwarded = forwarded(&request);
        let _upload = self.uploads.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_UPLOADS} deploys are being uploaded already; retry once they are done"
            ))
        })?;
        let mut chunks = request.into_inner();
        let mut module = Vec::new();
        let mut dry_run = None;
        while let Some(chunk) = next_chunk(&mut chunks).await? {
            dry_run.get_or_insert(chunk.dry_run);
            if module.len() + chunk.data.len() > MAX_MODULE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "the module is larger than the limit of {MAX_MODULE_BYTES} bytes"
                )));
            }
            module.extend_from_slice(&chunk.data);
        }
        if module.is_empty() {
            return Err(Status::invalid_argument("the module is empty"));
        }
        self.deploy_module(module, dry_run.unwrap_or(false), was_forwarded)
            .await
            .map(Response::new)
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

impl NodeService {
    /// The `Deploy` call, after the upload: validate, then replicate (or forward to the leader).
    async fn deploy_module(
        &self,
        module: Vec<u8>,
        dry_run: bool,
        was_forwarded: bool,
    ) -> Result<DeployResponse, Status> {
        let validated = self.validate(&module, dry_run).await?;
        if dry_run {
            return Ok(validated);
        }
        // Only the leader stores and pushes the module: another node hands the upload on.
        let status = (self.node)
            .call(|reply| NodeRequest::Status { reply })
            .await
            .map_err(status_of)?;
        if status.role != "leader" && !was_forwarded {
            let leader = status.members.get(&status.leader_id);
            return match leader {
                Some(address) => self.forward_deploy(address, &module).await,
                None => Err(status_of(NodeError::NoLeader)),
            };
        }
        // Stored here, then on a majority of voters, before the entry that names it by hash
        // is proposed (see `module_transfer`).
        let module = Arc::new(module);
        let sha256 = self.store_module(None, module.clone()).await?;
        self.replicate_module(sha256, module.clone()).await?;
        let result = self
            .node
            .call(|reply| NodeRequest::Deploy {
                sha256,
                module: module.clone(),
                reply,
            })
            .await;
        let applied = match result {
            Ok(deployed) => deployed,
            // Leadership moved meanwhile.
            Err(NodeError::NotLeader { address, .. }) if !was_forwarded => {
                return self.forward_deploy(&address, &module).await;
            }
            Err(error) => return Err(status_of(error)),
        };
        let (info, unchanged) = match applied.outcome {
            DeployOutcome::Switched(info) => (info, false),
            DeployOutcome::Unchanged(info) => (info, true),
            DeployOutcome::Refused(reason) => {
                return Err(Status::failed_precondition(format!(
                    "deploy refused: {reason}"
                )));
            }
        };
        let sha256 = hex::encode(info.sha256);
        let message = if unchanged {
            format!("unchanged: {sha256} is already active")
        } else {
            format!("deployed {sha256} {}", info.version)
                .trim_end()
                .to_string()
        };
        Ok(DeployResponse {
            unchanged,
            message,
            sha256,
            version: info.version,
            index: applied.index,
        })
    }
}

impl NodeService {
    /// Hands a deploy's upload on to the leader at `address`.
    async fn forward_deploy(&self, address: &str, module: &[u8]) -> Result<DeployResponse, Status> {
        let mut client = self.deploy_client(address)?;
        let chunks: Vec<DeployChunk> = module
            .chunks(riteraft_proto::CHUNK_BYTES)
            .map(|data| DeployChunk {
                data: data.to_vec(),
                dry_run: false,
            })
            .collect();
        client
            .deploy(mark_forwarded(tokio_stream::iter(chunks)))
            .await
            .map(Response::into_inner)
            .map_err(|status| unreached_leader(status, address))
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
