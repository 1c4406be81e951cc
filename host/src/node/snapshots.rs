//! Snapshots: when one is due, gathering it on the consensus thread as it streams to a thread
//! of its own that writes it, recording it once durable; installing a leader's; and the
//! snapshot that starts a new cluster.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::StateRole;
use raft::prelude::{Message, MessageType, Snapshot, SnapshotMetadata};

use super::heartbeat_pump::with_heartbeats;
use super::mailbox::NodeFatal;
use super::{Node, Outbox};
use crate::module_store::{HashedModule, ModuleStore};
use crate::replicated::{ClusterState, SNAPSHOT_FORMAT, SnapshotData, encode};
use crate::state_machine::{StateMachine, StateMachineError};
use crate::storage::{LogStore, SavedSnapshot, SnapshotStream, StorageError};

/// How long after a failed snapshot write the node tries again: a full or failing disk is not
/// asked to take the whole store again every round, and ten seconds add little to the log.
pub(super) const SNAPSHOT_RETRY: Duration = Duration::from_secs(10);

/// A snapshot of this node's state on its way to disk (see [`Node::maybe_snapshot`]).
pub(super) struct SnapshotSave {
    /// Encodes and writes it; the log store records the result.
    pub(super) thread: std::thread::JoinHandle<Result<SavedSnapshot, StorageError>>,
    /// The log index it stands at.
    pub(super) index: u64,
    /// Where the log is compacted to once it is durable.
    pub(super) compact_index: u64,
    /// The module it names: kept in the module store while the snapshot stands.
    pub(super) module: [u8; 32],
    /// When the snapshot was started, and how long the state took to gather (for the log).
    pub(super) started: Instant,
    pub(super) taken: Duration,
}

/// The snapshot that starts a new cluster: node 1 alone, with the store's initial state.
pub fn bootstrap_snapshot(
    address: String,
    state_machine: &mut impl StateMachine,
) -> Result<(Snapshot, ClusterState), StateMachineError> {
    let cluster = ClusterState {
        members: BTreeMap::from([(1, address)]),
        next_node_id: 2,
        ..ClusterState::default()
    };
    let data = SnapshotData {
        format: SNAPSHOT_FORMAT,
        cluster: cluster.clone(),
        plugin_sha256: state_machine.module_info().sha256,
        module: Vec::new(),
        store: state_machine.snapshot()?,
    };
    let mut snapshot = Snapshot {
        data: encode(&data).into(),
        ..Default::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.mut_conf_state().voters = vec![1];
    Ok((snapshot, cluster))
}

/// Restores a snapshot's store state, switching to the snapshot's code first when it differs
/// from the code running now (a node that joins or restarts after a deploy). That code comes
/// from the snapshot (format 3) or else from `modules`: the caller makes sure it is there
/// (see [`snapshot_module`]).
pub fn restore_snapshot_data(
    state_machine: &mut impl StateMachine,
    data: &SnapshotData,
    modules: &ModuleStore,
) -> Result<(), StateMachineError> {
    let running = state_machine.module_info().sha256;
    // A snapshot of a store built into the host (all zero) names no module to switch to.
    if data.plugin_sha256 == running || data.plugin_sha256 == [0; 32] {
        return state_machine.restore(&data.store);
    }
    tracing::warn!(
        cluster = %hex::encode(data.plugin_sha256),
        started_with = %hex::encode(running),
        "the cluster runs different store code than --plugin: switching to the cluster's"
    );
    if !data.module.is_empty() {
        let module = HashedModule::new(Arc::new(data.module.clone()));
        if let Err(e) = modules.put_hashed(module.sha256, module.bytes.clone()) {
            tracing::warn!("{e}");
        }
        return state_machine.restore_with_module(&module, &data.store);
    }
    let bytes = modules.get(&data.plugin_sha256).ok_or_else(|| {
        StateMachineError::Restore(format!(
            "the snapshot's module {} is not in this node's module store",
            hex::encode(data.plugin_sha256)
        ))
    })?;
    let module = HashedModule {
        sha256: data.plugin_sha256,
        bytes,
    };
    state_machine.restore_with_module(&module, &data.store)
}

/// The module a snapshot's code needs from the module store, if any: its sha256 when the
/// snapshot names it by hash only.
pub fn snapshot_module(data: &SnapshotData) -> Option<[u8; 32]> {
    (data.module.is_empty() && data.plugin_sha256 != [0; 32]).then_some(data.plugin_sha256)
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// Takes a snapshot when one is due: gathers the state here (the state machine lives on
    /// this thread), then encodes and writes it on a thread of its own, so that the Ready loop
    /// goes on meanwhile; [`Node::finish_snapshot`] records it once it is durable.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), NodeFatal> {
        let retry_later = self.snapshot_retry_at.is_some_and(|at| self.now < at);
        if self.saving.is_some() || retry_later {
            return Ok(());
        }
        let store = self.raw.store();
        let last_snapshot = store.snapshot_metadata().index;
        let since = self.applied.saturating_sub(last_snapshot);
        // A snapshot rewrites the whole store, so a large one waits until the log since the
        // last snapshot is a quarter of the store's size: snapshots then cost at most about
        // four times what is written, instead of a 300 MiB rewrite every 10,000 writes.
        //
        // Each node waits a little longer than the one before it (a sixteenth of the store more
        // per node id, cycling over four): their logs are the same, and with equal shares the
        // followers gathered a large store at the very same index, which left the leader
        // without a quorum for seconds.
        let log_bytes = store.log_bytes();
        let state_bytes = store.snapshot_bytes();
        let stagger = state_bytes / 16 * (self.id.saturating_sub(1) % 4);
        let due = (since >= self.options.snapshot_entries
            && log_bytes >= state_bytes / 4 + stagger)
            || log_bytes >= self.options.snapshot_log_bytes
            || store.snapshot_requested()
            || self.state_machine.wants_snapshot();
        if since == 0 || !due {
            return Ok(());
        }
        let started = Instant::now();
        let mut metadata = SnapshotMetadata {
            index: self.applied,
            term: raft::Storage::term(store, self.applied)?,
            ..Default::default()
        };
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        // The store's state goes to the file as the store hands it over (it is the tail of the
        // snapshot's data); the rest of the data, which ends with the state's length, after.
        let data = SnapshotData {
            format: SNAPSHOT_FORMAT,
            cluster: self.cluster.clone(),
            plugin_sha256: self.state_machine.module_info().sha256,
            module: Vec::new(),
            store: Bytes::new(),
        };
        let module = data.plugin_sha256;
        let head = Box::new(move |store_len| data.into_head(store_len));
        let (stream, writer, end) = SnapshotStream::new(metadata, head);
        let save = self.raw.store().snapshot_saver();
        let thread = std::thread::Builder::new()
            .name("snapshot-save".into())
            .spawn(move || save(stream))
            .map_err(StorageError::Io)?;
        if let Err(e) = self.gather_store(Box::new(writer)) {
            // Without `end`, the saver abandons the file (and says so, to nobody).
            drop(end);
            let _ = thread.join();
            return Err(e.into());
        }
        end.finish();
        self.saving = Some(SnapshotSave {
            thread,
            index: self.applied,
            compact_index: self.applied.saturating_sub(self.options.log_entries_kept),
            module,
            started,
            taken: started.elapsed(),
        });
        if !self.options.snapshot_on_thread {
            self.finish_snapshot(true)?;
        }
        Ok(())
    }

    /// Writes the store's snapshot into `out`, gathered on this thread (the store lives here),
    /// as the store hands it over. On a leader, a
    /// thread of its own meanwhile sends the followers a heartbeat every heartbeat interval on
    /// the leader's behalf: gathering a large store stops this loop for seconds (1.4-2.2 s for
    /// 255 MiB with 64 clients writing), longer than followers wait for a heartbeat (1-2 s),
    /// and cost the cluster its leader in most 1M-key runs.
    ///
    /// The heartbeats are the ones raft would send, made from its state as the gathering
    /// starts: this term, and a commit index no higher than each follower is known to hold
    /// (`min(matched, committed)`, raft's own rule), so repeating them is harmless. Their
    /// answers wait in the mailbox until the loop is back, and are handled then. A simulated
    /// network has no way in from another thread, and gets none.
    fn gather_store(&mut self, out: Box<dyn Write + Send>) -> Result<(), StateMachineError> {
        let heartbeats = self.stand_in_heartbeats();
        let sender = match heartbeats.is_empty() {
            true => None,
            false => self.outbox.side_sender(),
        };
        let Some(sender) = sender else {
            return self.state_machine.write_snapshot(out);
        };
        let interval = self.options.tick * self.options.heartbeat_ticks as u32;
        let state_machine = &mut self.state_machine;
        with_heartbeats(&heartbeats, &sender, interval, || {
            state_machine.write_snapshot(out)
        })
    }

    /// The heartbeats raft would send now, if this node leads: one per other member.
    fn stand_in_heartbeats(&self) -> Vec<Message> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Vec::new();
        }
        (raft.prs().iter())
            .filter(|(id, _)| **id != self.id)
            .map(|(id, progress)| {
                let mut heartbeat = Message::default();
                heartbeat.set_msg_type(MessageType::MsgHeartbeat);
                heartbeat.to = *id;
                heartbeat.from = self.id;
                heartbeat.term = raft.term;
                heartbeat.commit = progress.matched.min(raft.raft_log.committed);
                heartbeat
            })
            .collect()
    }

    /// Records the snapshot being written once its file is durable (with `wait`, waits for it:
    /// a node that stops leaves no half-written snapshot behind), and compacts the log.
    pub(super) fn finish_snapshot(&mut self, wait: bool) -> Result<(), NodeFatal> {
        let Some(save) = self
            .saving
            .take_if(|save| wait || save.thread.is_finished())
        else {
            return Ok(());
        };
        let saved = match save.thread.join() {
            Ok(Ok(saved)) => saved,
            Ok(Err(e)) => {
                // Nothing was recorded: the log is whole and the previous snapshot stands, so
                // the node goes on (writes stop by themselves when the disk is nearly full).
                tracing::error!(
                    index = save.index,
                    retry_in_s = SNAPSHOT_RETRY.as_secs(),
                    "cannot write a snapshot: {e}; the log is kept whole until one is written"
                );
                self.snapshot_retry_at = Some(self.now + SNAPSHOT_RETRY);
                return Ok(());
            }
            Err(_) => {
                return Err(StorageError::Inconsistent(
                    "the thread writing a snapshot panicked".into(),
                )
                .into());
            }
        };
        let (index, bytes) = (saved.metadata().index, saved.bytes());
        self.raw
            .mut_store()
            .compact_to_saved(saved, save.compact_index)?;
        self.checkpoint_saved();
        // Modules deployed before this snapshot are needed no more (but for a few kept to
        // roll back to): neither a restart nor a follower's install reads them.
        let running = self.state_machine.module_info().sha256;
        self.options.modules.prune(&[save.module, running]);
        (self.options.metrics).snapshot_taken(bytes, save.started.elapsed());
        tracing::info!(
            index,
            bytes,
            taken_ms = save.taken.as_millis() as u64,
            saved_ms = (save.started.elapsed() - save.taken).as_millis() as u64,
            "took a snapshot"
        );
        Ok(())
    }

    /// Tells the state machine its state as of the latest snapshot is durable, and how to read
    /// it back, so that it need not keep a copy in memory.
    pub(super) fn checkpoint_saved(&mut self) {
        let Some(read) = self.raw.store().snapshot_reader() else {
            return;
        };
        self.state_machine.checkpoint_saved(Box::new(move || {
            let snapshot = read().map_err(|e| e.to_string())?;
            let data = SnapshotData::decode(&snapshot.data).map_err(|e| e.to_string())?;
            Ok(data.store)
        }));
    }

    pub(super) fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), NodeFatal> {
        let index = snapshot.get_metadata().index;
        let data = SnapshotData::decode(&snapshot.data)?;
        tracing::info!(
            index,
            bytes = snapshot.data.len(),
            "installing a snapshot from the leader"
        );
        if let Some(sha256) = snapshot_module(&data)
            && !self.options.modules.contains(&sha256)
        {
            // The gRPC layer fetches a snapshot's module before it hands the snapshot over;
            // this is for a snapshot that came another way (a simulated network).
            let addresses = self.member_addresses();
            tracing::warn!(
                module = %hex::encode(sha256),
                "fetching the module of a snapshot on the consensus thread"
            );
            let fetched = self.options.modules.get_or_fetch(
                &sha256,
                None,
                self.options.module_fetcher.as_deref(),
                &addresses,
            );
            if let Err(why) = fetched {
                return Err(StateMachineError::Restore(format!(
                    "the snapshot's module {}: {why}",
                    hex::encode(sha256)
                ))
                .into());
            }
        }
        restore_snapshot_data(&mut self.state_machine, &data, &self.options.modules)?;
        (self.options.metrics).snapshot_installed(snapshot.data.len());
        self.cluster = data.cluster;
        self.outbox.set_members(&self.cluster.members);
        self.raw.mut_store().install_snapshot(snapshot)?;
        self.checkpoint_saved();
        self.applied = index;
        self.skip_applying_to(index);
        Ok(())
    }
}
