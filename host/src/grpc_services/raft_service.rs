//! The `Raft` service: peers' raft messages, snapshots, and the call back of a joiner.

use super::*;

impl NodeService {
    /// Hands a peer's batch of raft messages to the consensus loop, which checks each (see
    /// [`crate::peer_messages`]).
    fn deliver(&self, batch: RaftBatch, sender: Option<Arc<str>>) -> Result<(), Status> {
        if batch.removed_at_index > 0 {
            self.confirm_removal(batch.removed_at_index);
        }
        for bytes in &batch.messages {
            let message = decode_message(bytes)?;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                // Its data is checked only on the way in through `InstallSnapshot`.
                return Err(Status::invalid_argument(
                    "a snapshot travels by InstallSnapshot, not in a batch",
                ));
            }
            // A full queue drops the message: raft retransmits.
            self.node
                .send(NodeRequest::Raft(Box::new(message), sender.clone()));
        }
        Ok(())
    }

    /// Acts on a notice that this node was removed only once the cluster's leader confirms it:
    /// a notice proves nothing by itself (anyone who can reach the port can send one), while a
    /// member's own word about its membership does. Checked in the background, once at a time.
    fn confirm_removal(&self, index: u64) {
        if self.checking_removal.swap(true, Ordering::SeqCst) {
            return;
        }
        let service = self.clone();
        tokio::spawn(async move {
            for _ in 0..REMOVAL_CHECKS {
                match service.leader_removed_us(index).await {
                    Ok(true) => {
                        service.node.send(NodeRequest::Removed(index));
                        break;
                    }
                    Ok(false) => tracing::warn!(
                        index,
                        "a removal notice that no leader confirms (yet): ignored"
                    ),
                    Err(e) => tracing::warn!(index, "cannot check a removal notice: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            service.checking_removal.store(false, Ordering::SeqCst);
        });
    }

    /// Whether a member that leads in this node's term or later has applied `index` and no
    /// longer counts this node as a member.
    async fn leader_removed_us(&self, index: u64) -> Result<bool, NodeError> {
        let me = self
            .node
            .call(|reply| NodeRequest::Status { reply })
            .await?;
        for (id, address) in &me.members {
            if *id == me.id {
                continue;
            }
            let Ok(mut client) = self.peer_client(address) else {
                continue;
            };
            let Ok(Ok(status)) =
                tokio::time::timeout(IDENTIFY_TIMEOUT, client.status(StatusRequest {})).await
            else {
                continue;
            };
            let status = status.into_inner();
            if status.id == *id
                && status.role == "leader"
                && status.term >= me.term
                && status.applied_index >= index
                && !status.members.iter().any(|m| m.id == me.id)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn decode_message(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| Status::invalid_argument(format!("not a raft message: {e}")))
}

#[tonic::async_trait]
impl Raft for NodeService {
    async fn identify(
        &self,
        request: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        access::authorize(&request, Need::Node, "Raft.Identify")?;
        let IdentifyRequest {
            address,
            join_token,
        } = request.into_inner();
        let pending = self.join_token.lock().expect("join token lock").clone();
        let joining = address == self.address && pending.is_some_and(|token| token == join_token);
        Ok(Response::new(IdentifyResponse { joining }))
    }

    async fn send(&self, request: Request<RaftBatch>) -> Result<Response<SendAck>, Status> {
        let caller = access::authorize(&request, Need::Node, "Raft.Send")?;
        let sender = access::node_address(&caller);
        self.deliver(request.into_inner(), sender)?;
        Ok(Response::new(SendAck {}))
    }

    async fn stream(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let caller = access::authorize(&request, Need::Node, "Raft.Stream")?;
        let sender = access::node_address(&caller);
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            self.deliver(batch, sender.clone())?;
        }
        Ok(Response::new(SendAck {}))
    }

    type GetModuleStream = module_transfer::ModuleStream;

    async fn get_module(
        &self,
        request: Request<ModuleRequest>,
    ) -> Result<Response<Self::GetModuleStream>, Status> {
        access::authorize(&request, Need::Node, "Raft.GetModule")?;
        let chunks = self.serve_module(request.into_inner()).await?;
        Ok(Response::new(chunks))
    }

    async fn put_module(
        &self,
        request: Request<Streaming<ModuleChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        access::authorize(&request, Need::Node, "Raft.PutModule")?;
        self.receive_module(request.into_inner()).await?;
        Ok(Response::new(SendAck {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        let caller = access::authorize(&request, Need::Node, "Raft.InstallSnapshot")?;
        let sender = access::node_address(&caller);
        let _slot = self
            .snapshot_slot
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::unavailable("another snapshot is being received; retry once it is taken")
            })?;
        let mut chunks = request.into_inner();
        let header = next_chunk(&mut chunks)
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let mut message = decode_message(&header.message)?;
        if message.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(format!(
                "InstallSnapshot carries a MsgSnapshot, not a {:?}",
                message.get_msg_type()
            )));
        }
        if header.data_len > MAX_SNAPSHOT_BYTES {
            return Err(Status::invalid_argument(format!(
                "a snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
                header.data_len
            )));
        }
        // Grown as the data arrives, never sized by the announced length: an announcement
        // costs nothing to make.
        let mut data = Vec::new();
        while let Some(chunk) = next_chunk(&mut chunks).await? {
            if data.len() as u64 + chunk.data.len() as u64 > header.data_len {
                return Err(Status::invalid_argument("snapshot longer than announced"));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() as u64 != header.data_len {
            return Err(Status::invalid_argument(format!(
                "snapshot truncated: {} of {} bytes",
                data.len(),
                header.data_len
            )));
        }
        // Data that does not decode would stop the node once raft had taken it: refuse it
        // now, off the consensus thread.
        let data = bytes::Bytes::from(data);
        let (data, decoded) = tokio::task::spawn_blocking(move || {
            let decoded = SnapshotData::decode(&data).map_err(|e| {
                Status::invalid_argument(format!("the snapshot's data is unusable: {e}"))
            })?;
            // Only what names the module is kept: the store's state is in `data`.
            let module = crate::node::snapshot_module(&decoded);
            let members: Vec<String> = decoded.cluster.members.into_values().collect();
            Ok::<_, Status>((data, (module, members)))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        // The snapshot names its module by hash: the node needs its bytes to install it.
        let (module, members) = decoded;
        if let Some(sha256) = module {
            self.fetch_snapshot_module(sha256, sender.as_deref(), members)
                .await?;
        }
        message.mut_snapshot().data = data;
        // The snapshot is precious: wait (boundedly) for room in the queue rather than drop it.
        let mut request = Some(NodeRequest::Raft(Box::new(message), sender));
        for _ in 0..50 {
            match self.node.try_send(request.take().expect("set")) {
                Ok(()) => return Ok(Response::new(SendAck {})),
                Err(back) => {
                    request = Some(back);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(Status::unavailable(
            "the node is overloaded; snapshot not taken",
        ))
    }
}
