//! Free loopback ports for test nodes.
//!
//! A port is found by binding `127.0.0.1:0` and letting the kernel choose, so tests never
//! hard-code ports and never collide with one another's fixed choices. The listener is closed
//! before the node binds the port, so there is a window in which another process could take it;
//! within this process a set of every port handed out makes sure two tests running in parallel
//! (threads of one test binary) never get the same one.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// A loopback port nothing listens on right now, never handed out before in this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    // The kernel hands out ports in a spread-out order, so a repeat is rare; a bounded number of
    // tries keeps a broken environment from spinning forever.
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        let port = listener
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        if handed_out.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no fresh loopback port after 1000 tries")
}

/// `127.0.0.1:PORT` with a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        // Bound at once: the longer a port waits, the likelier some other process's outgoing
        // connection takes it from the same ephemeral range (the window the module doc names).
        for _ in 0..5 {
            TcpListener::bind(("127.0.0.1", free_port())).expect("a free port can be bound");
        }
        assert!(free_addr().ip().is_loopback());
    }
}
