//! Each node's check of what the other members' hosts read: a leader packs several commands
//! into one log entry only while every member's host reads packed entries ([`LOG_FORMAT`]).
//! During a rolling upgrade a member still on an older host would otherwise stop at the first
//! packed entry it applies, and again at every restart.
//!
//! Why by asking: nothing new can be said to an old host through the log (it stops at what it
//! cannot decode), but it answers `Status`, where the `log_format` it does not know reads as 0.

use std::collections::BTreeSet;

use super::*;

/// How often a node asks: packing starts this long after the last member is upgraded, and a
/// member that joins is asked within this long (it packs nothing for it meanwhile).
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl NodeService {
    /// Starts the check on `runtime`: every [`CHECK_EVERY`] it asks each member not yet known
    /// to read [`LOG_FORMAT`] for its `log_format`, and tells the node which members are known
    /// to (see `Node::may_pack`). Every node checks, not only the leader, so that a new leader
    /// knows at once; and a member once known stays known while it is a member (its id is never
    /// reused), so a member that is down does not stop packing. Going back to an older host
    /// after packing started is not supported (README). Ends when the node stops.
    pub fn watch_member_log_formats(&self, runtime: &tokio::runtime::Handle) {
        let service = self.clone();
        runtime.spawn(async move {
            let mut readers: BTreeSet<u64> = BTreeSet::new();
            // What the node was last told (it starts knowing of no one).
            let mut told = BTreeSet::new();
            // Kept across checks, by address: a check is a call on an open connection.
            let mut clients: HashMap<String, ClientClient<Channel>> = HashMap::new();
            let mut every = tokio::time::interval(CHECK_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let me = match service
                    .node
                    .call(|reply| NodeRequest::Status { reply })
                    .await
                {
                    Ok(me) => me,
                    Err(NodeError::Stopped) => return,
                    Err(_) => continue,
                };
                readers.retain(|id| me.members.contains_key(id));
                clients.retain(|address, _| me.members.values().any(|a| a == address));
                for (id, address) in &me.members {
                    if *id == me.id || readers.contains(id) {
                        continue;
                    }
                    if !clients.contains_key(address) {
                        let Ok(client) = service.peer_client(address) else {
                            continue;
                        };
                        clients.insert(address.clone(), client);
                    }
                    let client = clients.get_mut(address).expect("just inserted");
                    let asked =
                        tokio::time::timeout(IDENTIFY_TIMEOUT, client.status(StatusRequest {}));
                    if let Ok(Ok(status)) = asked.await
                        && status.get_ref().id == *id
                        && status.get_ref().log_format >= LOG_FORMAT
                    {
                        readers.insert(*id);
                        clients.remove(address);
                    }
                }
                if readers != told
                    && service
                        .node
                        .send(NodeRequest::PackedReaders(readers.clone()))
                {
                    told = readers.clone();
                }
            }
        });
    }
}
