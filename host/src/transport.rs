//! Raft messages between nodes, over gRPC.
//!
//! The consensus loop hands each outgoing message to [`Transport::send`], which never blocks:
//! every peer has a bounded queue drained by its own task. The task sends what has queued up
//! as one batch on a long-lived stream to the peer (the `Stream` call: a message on an open
//! stream costs far less than a call of its own, and arrives in order), opens a new stream
//! with backoff after a failure, and reports the failure to raft as "unreachable". Snapshots
//! go as a call of their own, in chunks, since one can be far larger than a gRPC message; a
//! snapshot whose message carries only its metadata is read from this node's snapshot file as
//! it goes (see [`crate::storage::LogStore::snapshot_opener`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use riteraft_proto::raft_client::RaftClient;
use riteraft_proto::tls::ClientTls;
use riteraft_proto::{DialOptions, dial};
use riteraft_proto::{RaftBatch, SnapshotChunk};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::node::{NodeHandle, Outbox, Request, SideSender};
use crate::storage::SnapshotOpener;

/// Messages queued for one peer before new ones are dropped (and the peer reported
/// unreachable): enough for a few seconds of full-speed replication.
const PEER_QUEUE: usize = 4096;
/// Most messages in one batch.
const MAX_BATCH_MESSAGES: usize = 512;
/// Most bytes in one batch, well under [`MAX_MESSAGE_BYTES`].
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Largest gRPC message a node sends or accepts (a batch, a snapshot chunk, a command): the
/// same limit the client library uses.
pub const MAX_MESSAGE_BYTES: usize = riteraft_proto::MAX_MESSAGE_BYTES;
/// Largest snapshot a node accepts: 4 GiB, the most a wasm32 store can address.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;
/// How long one batch may take before the peer counts as unreachable.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Batches waiting to go out on a peer's stream: enough to ride out a short stall of the
/// connection, few enough that a dead one is noticed within [`SEND_TIMEOUT`].
const STREAM_QUEUE: usize = 64;
/// Reconnect backoff: doubles from the first to the second value.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Delivers raft messages to the other members.
pub struct Transport {
    /// Reports delivery failures back to the consensus loop.
    node: NodeHandle,
    runtime: tokio::runtime::Handle,
    self_id: u64,
    /// This node's TLS identity for dialing peers (`None`: plain connections).
    tls: Option<Arc<ClientTls>>,
    /// Opens the data of a snapshot whose message carries none.
    snapshots: Option<SnapshotOpener>,
    /// Only the consensus thread uses the transport, so no lock.
    peers: HashMap<u64, Peer>,
}

struct Peer {
    address: String,
    queue: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Transport {
    /// A transport for node `self_id`, running its tasks on `runtime`; `snapshots` opens the
    /// data of a snapshot whose message carries none (see
    /// [`crate::storage::LogStore::snapshot_opener`]).
    pub fn new(
        self_id: u64,
        node: NodeHandle,
        runtime: tokio::runtime::Handle,
        tls: Option<Arc<ClientTls>>,
        snapshots: Option<SnapshotOpener>,
    ) -> Self {
        Self {
            node,
            runtime,
            self_id,
            tls,
            snapshots,
            peers: HashMap::new(),
        }
    }
}

impl Outbox for Transport {
    /// Queues a message for its peer. `false` when it cannot be queued (unknown peer, or its
    /// queue is full): the caller reports the peer unreachable.
    fn send(&mut self, message: Message) -> bool {
        match self.peers.get(&message.to) {
            Some(peer) => peer.queue.try_send(message).is_ok(),
            None => false,
        }
    }

    /// The peers' queues as they are now: a peer that joins meanwhile is not among them,
    /// which costs it nothing but these messages.
    fn side_sender(&self) -> Option<SideSender> {
        let queues: HashMap<u64, mpsc::Sender<Message>> = (self.peers.iter())
            .map(|(id, peer)| (*id, peer.queue.clone()))
            .collect();
        Some(Box::new(move |message: Message| {
            (queues.get(&message.to)).is_some_and(|queue| queue.try_send(message).is_ok())
        }))
    }

    /// Makes the set of peers match the membership: starts tasks for new members, stops those
    /// of removed ones, restarts those whose address changed.
    fn set_members(&mut self, members: &BTreeMap<u64, String>) {
        let peers = &mut self.peers;
        peers.retain(|id, peer| members.get(id) == Some(&peer.address));
        for (id, address) in members {
            if *id == self.self_id || peers.contains_key(id) {
                continue;
            }
            let (queue, receiver) = mpsc::channel(PEER_QUEUE);
            let task = self.runtime.spawn(deliver(
                *id,
                address.clone(),
                receiver,
                self.node.clone(),
                self.tls.clone(),
                self.snapshots.clone(),
            ));
            peers.insert(
                *id,
                Peer {
                    address: address.clone(),
                    queue,
                    task,
                },
            );
        }
    }

    /// Tells a removed node that it was removed (it may never see its removal commit, since the
    /// leader stops replicating to it). Best effort: a few tries, then give up.
    fn notify_removed(&mut self, id: u64, address: String, index: u64) {
        let tls = self.tls.clone();
        self.runtime.spawn(async move {
            for attempt in 0..5u32 {
                let sent = async {
                    let mut client = connect(&address, &tls).await?;
                    let batch = RaftBatch {
                        messages: vec![],
                        removed_at_index: index,
                    };
                    client
                        .send(batch)
                        .await
                        .map_err(|e| e.message().to_string())?;
                    Ok::<(), String>(())
                };
                match tokio::time::timeout(SEND_TIMEOUT, sent).await {
                    Ok(Ok(())) => return,
                    _ => tokio::time::sleep(BACKOFF.0 * 2u32.pow(attempt)).await,
                }
            }
            tracing::warn!(node = id, %address, "could not tell the removed node it was removed");
        });
    }
}

/// How a node dials another: with its own TLS identity (if any), expecting the certificate of
/// the member at `address`, so that nothing else listening there can pose as it.
pub fn peer_dial_options(
    address: &str,
    tls: &Option<Arc<ClientTls>>,
    timeout: Option<Duration>,
) -> DialOptions {
    DialOptions {
        connect_timeout: CONNECT_TIMEOUT,
        timeout,
        tls: tls.clone(),
        expect_node: Some(address.to_string()),
    }
}

async fn connect(
    address: &str,
    tls: &Option<Arc<ClientTls>>,
) -> Result<RaftClient<Channel>, String> {
    let channel = dial(address, &peer_dial_options(address, tls, None))
        .await
        .map_err(|e| e.to_string())?;
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The task that drains one peer's queue.
async fn deliver(
    id: u64,
    address: String,
    mut queue: mpsc::Receiver<Message>,
    node: NodeHandle,
    tls: Option<Arc<ClientTls>>,
    snapshots: Option<SnapshotOpener>,
) {
    let mut client: Option<RaftClient<Channel>> = None;
    let mut stream: Option<PeerStream> = None;
    let mut backoff = BACKOFF.0;
    let mut carried: Option<Message> = None;
    loop {
        let first = match carried.take() {
            Some(message) => message,
            None => match queue.recv().await {
                Some(message) => message,
                None => return,
            },
        };
        let delivered = if first.get_msg_type() == MessageType::MsgSnapshot {
            let delivered = send_snapshot(&mut client, &address, &tls, &snapshots, first).await;
            node.send(Request::SnapshotSent(id, delivered));
            delivered
        } else {
            let mut bytes = 0;
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(message) = next.take() {
                let encoded = message
                    .write_to_bytes()
                    .expect("raft messages always encode");
                bytes += encoded.len();
                batch.push(encoded);
                if bytes >= MAX_BATCH_BYTES || batch.len() >= MAX_BATCH_MESSAGES {
                    break;
                }
                match queue.try_recv() {
                    Ok(m) if m.get_msg_type() == MessageType::MsgSnapshot => carried = Some(m),
                    Ok(m) => next = Some(m),
                    Err(_) => {}
                }
            }
            send_batch(&mut client, &mut stream, &address, &tls, batch).await
        };
        if delivered {
            backoff = BACKOFF.0;
            continue;
        }
        tracing::debug!(peer = id, %address, "peer unreachable");
        client = None;
        stream = None;
        node.send(Request::Unreachable(id));
        // What queued up meanwhile is stale: raft resends from the peer's progress.
        if let Some(message) = carried.take() {
            drop_message(id, &node, message);
        }
        while let Ok(message) = queue.try_recv() {
            drop_message(id, &node, message);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// Drops a queued message; a snapshot must be reported, or raft waits for it forever.
fn drop_message(id: u64, node: &NodeHandle, message: Message) {
    if message.get_msg_type() == MessageType::MsgSnapshot {
        node.send(Request::SnapshotSent(id, false));
    }
}

async fn ensure_client<'a>(
    client: &'a mut Option<RaftClient<Channel>>,
    address: &str,
    tls: &Option<Arc<ClientTls>>,
) -> Result<&'a mut RaftClient<Channel>, String> {
    if client.is_none() {
        *client = Some(connect(address, tls).await?);
    }
    Ok(client.as_mut().expect("just set"))
}

/// An open `Stream` call to a peer.
struct PeerStream {
    /// Feeds the call; closed when it ends.
    batches: mpsc::Sender<RaftBatch>,
    /// The call, which ends only when the stream breaks (or the peer goes away).
    call: tokio::task::JoinHandle<()>,
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        self.call.abort();
    }
}

/// Sends one batch on the peer's stream, opening one if there is none (or it broke). `false`
/// means the peer is unreachable; a batch that was queued on a stream that then broke is lost
/// without notice, which raft's retransmission covers.
async fn send_batch(
    client: &mut Option<RaftClient<Channel>>,
    stream: &mut Option<PeerStream>,
    address: &str,
    tls: &Option<Arc<ClientTls>>,
    messages: Vec<Vec<u8>>,
) -> bool {
    if stream.as_ref().is_some_and(|open| open.call.is_finished()) {
        *stream = None;
        return false;
    }
    if stream.is_none() {
        let Ok(client) = ensure_client(client, address, tls).await else {
            return false;
        };
        let (batches, receiver) = mpsc::channel(STREAM_QUEUE);
        let mut client = client.clone();
        let address = address.to_string();
        let call = tokio::spawn(async move {
            let batches = tokio_stream::wrappers::ReceiverStream::new(receiver);
            if let Err(e) = client.stream(batches).await {
                tracing::debug!(%address, "raft stream ended: {}", e.message());
            }
        });
        *stream = Some(PeerStream { batches, call });
    }
    let open = stream.as_ref().expect("just set");
    let batch = RaftBatch {
        messages,
        removed_at_index: 0,
    };
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, open.batches.send(batch)).await,
        Ok(Ok(()))
    )
}

async fn send_snapshot(
    client: &mut Option<RaftClient<Channel>>,
    address: &str,
    tls: &Option<Arc<ClientTls>>,
    snapshots: &Option<SnapshotOpener>,
    mut message: Message,
) -> bool {
    let data = std::mem::take(&mut message.mut_snapshot().data);
    let (data_len, data): (u64, Box<dyn std::io::Read + Send>) = if data.is_empty() {
        // Only the metadata came: the data is in this node's snapshot file.
        let metadata = message.get_snapshot().get_metadata().clone();
        match open_snapshot_file(snapshots.clone(), metadata).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(to = message.to, "cannot send a snapshot: {e}");
                return false;
            }
        }
    } else {
        (data.len() as u64, Box::new(std::io::Cursor::new(data)))
    };
    let header = SnapshotChunk {
        message: message
            .write_to_bytes()
            .expect("raft messages always encode"),
        data_len,
        data: Vec::new(),
    };
    let chunks = chunks_of(header, data);
    // A generous bound: 10 s plus one second per 16 MiB.
    let timeout = Duration::from_secs(10 + (data_len >> 24));
    tracing::info!(to = message.to, bytes = data_len, "sending a snapshot");
    let call = async {
        let client = ensure_client(client, address, tls).await?;
        client
            .install_snapshot(chunks)
            .await
            .map_err(|e| e.message().to_string())
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(to = message.to, "sending a snapshot failed: {e}");
            false
        }
        Err(_) => {
            tracing::warn!(to = message.to, "sending a snapshot timed out");
            false
        }
    }
}

/// Most chunks read ahead of the call.
const CHUNKS_AHEAD: usize = 2;

/// `header`, then `data` in chunks, read by a blocking thread as the call takes them (a
/// snapshot file is read from disk; and no copy of a whole snapshot is made beside its data,
/// which would double what a leader holds while it sends a large store). A read that fails
/// half-way ends the stream short, which the receiver refuses.
fn chunks_of(
    header: SnapshotChunk,
    mut data: Box<dyn std::io::Read + Send>,
) -> tokio_stream::wrappers::ReceiverStream<SnapshotChunk> {
    let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        if sender.blocking_send(header).is_err() {
            return;
        }
        loop {
            let mut chunk = Vec::with_capacity(riteraft_proto::CHUNK_BYTES);
            let read = (&mut data)
                .take(riteraft_proto::CHUNK_BYTES as u64)
                .read_to_end(&mut chunk);
            match read {
                Ok(0) => return,
                Ok(_) => {
                    let chunk = SnapshotChunk {
                        message: Vec::new(),
                        data_len: 0,
                        data: chunk,
                    };
                    if sender.blocking_send(chunk).is_err() {
                        return; // the call ended
                    }
                }
                Err(e) => {
                    tracing::warn!("reading a snapshot to send it failed: {e}");
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Opens the snapshot of `metadata` through `snapshots`, off the network threads (the file is
/// checked whole against its checksum first): its data's length and a reader of it.
async fn open_snapshot_file(
    snapshots: Option<SnapshotOpener>,
    metadata: raft::prelude::SnapshotMetadata,
) -> Result<(u64, Box<dyn std::io::Read + Send>), String> {
    let Some(open) = snapshots else {
        return Err("its message has no data and this node keeps no snapshot files".into());
    };
    let contents = tokio::task::spawn_blocking(move || open(&metadata))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((contents.len, contents.reader))
}
