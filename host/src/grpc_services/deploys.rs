//! Deploys (`Client.Deploy` and `Client.DeployWatch`): receive the upload, check that it is a
//! usable store, hand it to the leader if this node is not it, store it on a majority of
//! voters, and propose the entry that switches every replica to it. `DeployWatch` reports each
//! of those steps as it happens, which is what `riteraft deploy` shows.

use std::pin::Pin;

use riteraft_proto::{DeployEvent, DeployStep, deploy_event};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::*;
use crate::module_store::ModuleHash;

/// The events of a watched deploy, as `Client.DeployWatch` answers.
pub(super) type DeployEvents = Pin<Box<dyn Stream<Item = Result<DeployEvent, Status>> + Send>>;

/// A deploy's whole upload, with the upload slot it holds until the deploy is over.
pub(super) struct DeployUpload {
    module: Vec<u8>,
    dry_run: bool,
    was_forwarded: bool,
    _slot: OwnedSemaphorePermit,
}

/// Where a deploy reports its steps: a watcher's stream, or nowhere (a plain `Deploy`).
///
/// Unbounded, because a deploy sends a handful of steps (about one per voter and five more):
/// the watcher never holds the deploy back, and the memory is bounded by the deploy itself.
struct Progress {
    events: Option<mpsc::UnboundedSender<Result<DeployEvent, Status>>>,
    since: Instant,
}

impl Progress {
    fn unwatched() -> Self {
        Self {
            events: None,
            since: Instant::now(),
        }
    }

    fn step(&self, stage: &str, message: String) {
        let elapsed_ms = self.since.elapsed().as_millis() as u64;
        self.relay(DeployStep {
            stage: stage.to_string(),
            message,
            elapsed_ms,
        });
    }

    /// Passes on a step the leader reported to a node that forwarded to it, its time moved to
    /// count from this node's start, so a watcher reads one clock.
    fn relay_from(&self, forwarded_at_ms: u64, mut step: DeployStep) {
        step.elapsed_ms += forwarded_at_ms;
        self.relay(step);
    }

    fn relay(&self, step: DeployStep) {
        if let Some(events) = &self.events {
            let event = deploy_event::Event::Step(step);
            // A watcher that went away misses the rest; the deploy goes on.
            let _ = events.send(Ok(DeployEvent { event: Some(event) }));
        }
    }
}

/// `bytes` for people: "18.4 MiB".
fn size(bytes: usize) -> String {
    const MIB: f64 = (1 << 20) as f64;
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

impl NodeService {
    /// Receives a deploy's chunks (bounded by [`MAX_MODULE_BYTES`] and [`MAX_UPLOADS`]).
    pub(super) async fn receive_deploy(
        &self,
        request: Request<Streaming<DeployChunk>>,
        call: &str,
    ) -> Result<DeployUpload, Status> {
        access::authorize(&request, Need::Role(Role::Admin), call)?;
        let was_forwarded = forwarded(&request);
        let slot = self.uploads.clone().try_acquire_owned().map_err(|_| {
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
        Ok(DeployUpload {
            module,
            dry_run: dry_run.unwrap_or(false),
            was_forwarded,
            _slot: slot,
        })
    }

    /// `Client.Deploy`: the deploy of `upload`, answered once it is applied.
    pub(super) async fn deploy_unwatched(
        &self,
        upload: DeployUpload,
    ) -> Result<DeployResponse, Status> {
        self.deploy_module(upload, &Progress::unwatched()).await
    }

    /// `Client.DeployWatch`: the deploy of `upload` on a task of its own, its steps and answer
    /// streamed as they come. The deploy goes on if the watcher leaves, so that whether it
    /// happens does not depend on when a client hung up.
    pub(super) fn deploy_watched(&self, upload: DeployUpload) -> DeployEvents {
        let (events, receiver) = mpsc::unbounded_channel();
        let progress = Progress {
            events: Some(events.clone()),
            since: Instant::now(),
        };
        let service = self.clone();
        tokio::spawn(async move {
            let answer = service.deploy_module(upload, &progress).await;
            let event = answer.map(|done| DeployEvent {
                event: Some(deploy_event::Event::Done(done)),
            });
            let _ = events.send(event);
        });
        Box::pin(UnboundedReceiverStream::new(receiver))
    }

    /// A deploy after its upload: validate, then replicate (or forward to the leader).
    async fn deploy_module(
        &self,
        upload: DeployUpload,
        progress: &Progress,
    ) -> Result<DeployResponse, Status> {
        let DeployUpload {
            module,
            dry_run,
            was_forwarded,
            ..
        } = upload;
        let at = &self.address;
        progress.step("received", format!("{} at {at}", size(module.len())));
        let module = Arc::new(module);
        let started = Instant::now();
        let sha256 = self.validate(module.clone()).await?;
        progress.step(
            "compiled",
            format!(
                "{at} checked and compiled it in {:.1} s (sha256 {})",
                started.elapsed().as_secs_f64(),
                hex::encode(sha256)
            ),
        );
        if dry_run {
            return self.try_restore(sha256, &module).await;
        }
        // Only the leader stores and pushes the module: another node hands the upload on.
        let status = (self.node)
            .call(|reply| NodeRequest::Status { reply })
            .await
            .map_err(status_of)?;
        if status.role != "leader" && !was_forwarded {
            let leader = status.members.get(&status.leader_id);
            return match leader {
                Some(address) => self.forward_deploy(address, &module, progress).await,
                None => Err(status_of(NodeError::NoLeader)),
            };
        }
        // Stored here, then on a majority of voters, before the entry that names it by hash
        // is proposed (see `module_transfer`).
        self.store_module(sha256, false, module.clone()).await?;
        self.replicate_module(sha256, module.clone(), &|stored, voters| {
            progress.step("stored", format!("stored on {stored} of {voters} voters"));
        })
        .await?;
        progress.step(
            "proposed",
            "proposed the deploy entry: each replica switches to the module when it applies \
             the entry"
                .into(),
        );
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
                return self.forward_deploy(&address, &module, progress).await;
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

    /// Checks that `module` is a usable store (compiling it: seconds for a large one, so on a
    /// blocking thread) and returns its sha256. The compiled module stays in the runtime's
    /// cache, where this node finds it when the deploy entry applies.
    async fn validate(&self, module: Arc<Vec<u8>>) -> Result<ModuleHash, Status> {
        let plugins = self.plugins()?;
        let loaded = tokio::task::spawn_blocking(move || {
            let sha256: ModuleHash = Sha256::digest(&module[..]).into();
            plugins.load_cached_hashed(&module, sha256).map(|_| sha256)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        loaded.map_err(|e| {
            Status::failed_precondition(format!("the module is not a usable store: {e}"))
        })
    }

    fn plugins(&self) -> Result<Arc<PluginRuntime>, Status> {
        self.plugins.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node runs a store built into the host (--builtin-kv); it cannot be replaced",
            )
        })
    }

    /// A dry run: does the module (compiled by [`Self::validate`]) restore this node's current
    /// state?
    async fn try_restore(
        &self,
        sha256: ModuleHash,
        module: &Arc<Vec<u8>>,
    ) -> Result<DeployResponse, Status> {
        let plugins = self.plugins()?;
        let (snapshot, active) = self
            .node
            .call(|reply| NodeRequest::Snapshot { reply })
            .await
            .map_err(status_of)?;
        let module = module.clone();
        let tried = tokio::task::spawn_blocking(move || {
            let loaded = plugins
                .load_cached_hashed(&module, sha256)
                .map_err(|e| format!("the module is not a usable store: {e}"))?;
            let mut instance = plugins
                .instantiate(&loaded)
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
        Ok(DeployResponse {
            message: format!(
                "dry run: the module loads and restores the current state ({state_bytes} bytes); \
                 nothing was committed"
            ),
            sha256: hex::encode(sha256),
            version,
            index: 0,
            unchanged: active.sha256 == sha256,
        })
    }

    /// Hands a deploy's upload on to the leader at `address`, passing on the steps it reports.
    async fn forward_deploy(
        &self,
        address: &str,
        module: &[u8],
        progress: &Progress,
    ) -> Result<DeployResponse, Status> {
        progress.step(
            "forwarded",
            format!(
                "{} is not the leader: handed the upload to {address}",
                self.address
            ),
        );
        let forwarded_at_ms = progress.since.elapsed().as_millis() as u64;
        let mut client = self.deploy_client(address)?;
        let chunks = || {
            let chunks: Vec<DeployChunk> = module
                .chunks(riteraft_proto::CHUNK_BYTES)
                .map(|data| DeployChunk {
                    data: data.to_vec(),
                    dry_run: false,
                })
                .collect();
            mark_forwarded(tokio_stream::iter(chunks))
        };
        let unreached = |status| unreached_leader(status, address);
        let mut events = match client.deploy_watch(chunks()).await {
            Ok(events) => events.into_inner(),
            // A leader from before `DeployWatch`: the plain call, without steps.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                let answer = client.deploy(chunks()).await.map_err(unreached)?;
                return Ok(answer.into_inner());
            }
            Err(status) => return Err(unreached(status)),
        };
        while let Some(event) = events.message().await.map_err(unreached)? {
            match event.event {
                Some(deploy_event::Event::Step(step)) => progress.relay_from(forwarded_at_ms, step),
                Some(deploy_event::Event::Done(answer)) => return Ok(answer),
                None => {}
            }
        }
        Err(Status::unavailable(format!(
            "the leader at {address} ended the deploy without an answer; it may or may not be \
             applied"
        )))
    }
}
