//! Store modules between nodes (`Raft.GetModule`, `Raft.PutModule`). Each node keeps a module
//! once, by sha256 (see [`crate::module_store`]), and modules move in chunks, so their size is
//! bounded by [`MAX_MODULE_BYTES`], not by a message or a log entry.
//!
//! The leader pushes a deployed module to the voters and proposes the entry that names it only
//! once a majority of voters (itself among them) stores it: then, while a majority is up, some
//! member that is up has it, and a member that lacks it when the entry or a snapshot naming it
//! arrives fetches it from the others. What a replica runs is always the bytes whose hash the
//! log names: every module that arrives is checked against it.

use std::pin::Pin;

use sha2::{Digest, Sha256};
use tokio_stream::Stream;

use super::*;
use crate::module_store::{ModuleFetcher, ModuleHash};

/// How long one fetch or push of a module may take: 128 MiB over loopback or a LAN takes a
/// few seconds; this leaves room for a slow link or a busy node.
const MODULE_TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// The chunks of a module, as `Raft.GetModule` answers.
pub(super) type ModuleStream = Pin<Box<dyn Stream<Item = Result<ModuleChunk, Status>> + Send>>;

fn module_hash(bytes: &[u8]) -> Result<ModuleHash, Status> {
    bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "a module's sha256 is 32 bytes, not {}",
            bytes.len()
        ))
    })
}

/// `module` as chunks, the first naming it.
fn chunks_of(sha256: ModuleHash, module: Arc<Vec<u8>>) -> impl Iterator<Item = ModuleChunk> {
    let count = module.len().div_ceil(riteraft_proto::CHUNK_BYTES).max(1);
    (0..count).map(move |i| {
        let start = i * riteraft_proto::CHUNK_BYTES;
        let end = (start + riteraft_proto::CHUNK_BYTES).min(module.len());
        let first = i == 0;
        ModuleChunk {
            sha256: if first { sha256.to_vec() } else { Vec::new() },
            len: if first { module.len() as u64 } else { 0 },
            data: module[start..end].to_vec(),
        }
    })
}

/// Reads a module from its chunks, bounded by [`MAX_MODULE_BYTES`] and by the length its first
/// chunk announces.
async fn read_module(chunks: &mut Streaming<ModuleChunk>) -> Result<(ModuleHash, Vec<u8>), Status> {
    let first = next_chunk(chunks)
        .await?
        .ok_or_else(|| Status::invalid_argument("an empty module stream"))?;
    let sha256 = module_hash(&first.sha256)?;
    if first.len > MAX_MODULE_BYTES as u64 {
        return Err(Status::invalid_argument(format!(
            "a module of {} bytes exceeds the limit of {MAX_MODULE_BYTES} bytes",
            first.len
        )));
    }
    // Grown as the data arrives, never sized by the announced length alone.
    let mut module = first.data;
    while let Some(chunk) = next_chunk(chunks).await? {
        if module.len() as u64 + chunk.data.len() as u64 > first.len {
            return Err(Status::invalid_argument("a module longer than announced"));
        }
        module.extend_from_slice(&chunk.data);
    }
    if module.len() as u64 != first.len {
        return Err(Status::invalid_argument(format!(
            "a module cut short: {} of {} bytes",
            module.len(),
            first.len
        )));
    }
    Ok((sha256, module))
}

/// A Raft client for moving a module to or from the node at `address`.
fn module_client(
    address: &str,
    tls: &Option<Arc<ClientTls>>,
) -> Result<RaftClient<Channel>, String> {
    let options = peer_dial_options(address, tls, Some(MODULE_TRANSFER_TIMEOUT));
    let channel = dial_lazy(address, &options).map_err(|e| e.to_string())?;
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The module `sha256` from the node at `address`.
async fn fetch_from(
    address: &str,
    tls: &Option<Arc<ClientTls>>,
    sha256: &ModuleHash,
) -> Result<Vec<u8>, String> {
    let mut client = module_client(address, tls)?;
    let request = ModuleRequest {
        sha256: sha256.to_vec(),
    };
    let mut chunks = (client.get_module(request).await)
        .map_err(|status| status.message().to_string())?
        .into_inner();
    let (got, module) = read_module(&mut chunks)
        .await
        .map_err(|status| status.message().to_string())?;
    if got != *sha256 {
        return Err("it sent another module".into());
    }
    Ok(module)
}

/// The module `sha256` from the first of `addresses` that has it.
async fn fetch_from_any(
    addresses: &[String],
    tls: &Option<Arc<ClientTls>>,
    sha256: &ModuleHash,
) -> Result<Vec<u8>, String> {
    let mut failures = Vec::new();
    for address in addresses {
        match tokio::time::timeout(MODULE_TRANSFER_TIMEOUT, fetch_from(address, tls, sha256)).await
        {
            Ok(Ok(module)) => {
                tracing::info!(
                    module = %hex::encode(sha256),
                    bytes = module.len(),
                    from = %address,
                    "fetched a module"
                );
                return Ok(module);
            }
            Ok(Err(why)) => failures.push(format!("{address}: {why}")),
            Err(_) => failures.push(format!(
                "{address}: no module in {MODULE_TRANSFER_TIMEOUT:?}"
            )),
        }
    }
    if failures.is_empty() {
        return Err("no other member to fetch it from".into());
    }
    Err(format!("no member gave it ({})", failures.join("; ")))
}

/// Fetches modules from other members over gRPC, for the consensus loop's threads.
#[derive(Debug)]
pub struct GrpcModuleFetcher {
    runtime: tokio::runtime::Handle,
    tls: Option<Arc<ClientTls>>,
}

impl GrpcModuleFetcher {
    pub fn new(runtime: tokio::runtime::Handle, tls: Option<Arc<ClientTls>>) -> Self {
        Self { runtime, tls }
    }
}

impl ModuleFetcher for GrpcModuleFetcher {
    fn fetch(
        &self,
        sha256: &ModuleHash,
        _len: Option<u64>,
        addresses: &[String],
    ) -> Result<Vec<u8>, String> {
        self.runtime
            .block_on(fetch_from_any(addresses, &self.tls, sha256))
    }
}

impl NodeService {
    /// `Raft.GetModule`: the module, if this node has it.
    pub(super) async fn serve_module(
        &self,
        request: ModuleRequest,
    ) -> Result<ModuleStream, Status> {
        let sha256 = module_hash(&request.sha256)?;
        let modules = self.modules.clone();
        let module = tokio::task::spawn_blocking(move || modules.get(&sha256))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| {
                Status::not_found(format!("module {} is not here", hex::encode(sha256)))
            })?;
        Ok(Box::pin(tokio_stream::iter(
            chunks_of(sha256, module).map(Ok),
        )))
    }

    /// `Raft.PutModule`: stores a module a member pushes (checked against its hash).
    pub(super) async fn receive_module(
        &self,
        mut chunks: Streaming<ModuleChunk>,
    ) -> Result<(), Status> {
        let _upload = self.uploads.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "modules are being uploaded already; retry once they are done",
            )
        })?;
        let (sha256, module) = read_module(&mut chunks).await?;
        self.store_module(sha256, true, Arc::new(module)).await?;
        Ok(())
    }

    /// Stores `module`, whose sha256 is `sha256`, in this node's module store; with `verify`,
    /// only if its bytes hash to that (they came from another node).
    pub(super) async fn store_module(
        &self,
        sha256: ModuleHash,
        verify: bool,
        module: Arc<Vec<u8>>,
    ) -> Result<(), Status> {
        let modules = self.modules.clone();
        tokio::task::spawn_blocking(move || {
            if verify && Sha256::digest(&module[..])[..] != sha256[..] {
                return Err(Status::invalid_argument(
                    "the module's bytes do not hash to its sha256",
                ));
            }
            (modules.put_hashed(sha256, module))
                .map_err(|e| Status::resource_exhausted(e.to_string()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// Makes sure a snapshot's module `sha256` is here before the snapshot goes to the
    /// consensus loop, fetching it from the snapshot's sender (or else one of `members`).
    pub(super) async fn fetch_snapshot_module(
        &self,
        sha256: ModuleHash,
        sender: Option<&str>,
        members: Vec<String>,
    ) -> Result<(), Status> {
        if self.modules.contains(&sha256) {
            return Ok(());
        }
        let mut addresses: Vec<String> = sender.map(str::to_string).into_iter().collect();
        for address in members {
            if address != self.address && !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        let module = fetch_from_any(&addresses, &self.tls, &sha256)
            .await
            .map_err(|why| {
                Status::unavailable(format!(
                    "cannot get the snapshot's module {}: {why}",
                    hex::encode(sha256)
                ))
            })?;
        self.store_module(sha256, true, Arc::new(module)).await?;
        Ok(())
    }

    /// Pushes `module` to the other voters, and returns once a majority of the voters (this
    /// node among them, which stores it already) has stored it; the rest go on in the
    /// background, and any voter that misses it fetches it later. Calls `stored(count,
    /// voters)` each time one more voter has it.
    pub(super) async fn replicate_module(
        &self,
        sha256: ModuleHash,
        module: Arc<Vec<u8>>,
        stored_on: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(), Status> {
        let status = self
            .node
            .call(|reply| NodeRequest::Status { reply })
            .await
            .map_err(status_of)?;
        let voters: Vec<(u64, String)> = (status.members.iter())
            .filter(|(id, _)| !status.learners.contains_key(id))
            .map(|(id, address)| (*id, address.clone()))
            .collect();
        let voter_count = voters.len();
        let needed = voter_count / 2 + 1;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(voters.len().max(1));
        for (id, address) in voters.into_iter().filter(|(id, _)| *id != status.id) {
            let (tls, module, done) = (self.tls.clone(), module.clone(), done_tx.clone());
            tokio::spawn(async move {
                let pushed = async {
                    let mut client = module_client(&address, &tls)?;
                    let chunks = tokio_stream::iter(chunks_of(sha256, module));
                    (client.put_module(chunks).await)
                        .map(|_| ())
                        .map_err(|status| status.message().to_string())
                };
                let result = match tokio::time::timeout(MODULE_TRANSFER_TIMEOUT, pushed).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("not stored in {MODULE_TRANSFER_TIMEOUT:?}")),
                };
                if let Err(why) = &result {
                    tracing::warn!(node = id, %address, "cannot push a deployed module: {why}");
                }
                let _ = done.send(result.is_ok()).await;
            });
        }
        drop(done_tx);
        let mut stored = 1;
        stored_on(stored, voter_count);
        while stored < needed {
            match done_rx.recv().await {
                Some(true) => {
                    stored += 1;
                    stored_on(stored, voter_count);
                }
                Some(false) => {}
                None => {
                    return Err(Status::unavailable(format!(
                        "only {stored} of the {needed} voters needed could store the module; \
                         the deploy was not made"
                    )));
                }
            }
        }
        Ok(())
    }
}
