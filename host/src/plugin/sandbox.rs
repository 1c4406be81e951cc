//! The deterministic stand-ins that replace WASI's clocks, randomness and stdio.
//!
//! Before each call the runtime "enters" the call's [`ApplyContext`] into a shared
//! [`CallEnvironment`]; the stand-ins read it. So a plugin's view of time and randomness is a
//! function of the log entry alone: identical on every replica, and identical when an instance
//! is rebuilt and the entry replayed.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

use crate::state_machine::ApplyContext;

/// The seed std's `HashMap`s get (through `insecure-random-seed`): fixed, so iteration orders
/// repeat across replicas.
pub const INSECURE_RANDOM_SEED: u128 = 0x5249_5445_5241_4654_5345_4544_0000_0001;

/// What the current call may observe of the outside world.
#[derive(Debug, Default)]
pub struct CallEnvironment {
    /// The leader's timestamp of the entry being applied (of the last applied, for a query).
    timestamp_ms: AtomicU64,
    /// The command whose random stream this call reads: its index, term and position in its
    /// entry. The seed itself is derived only when the plugin asks for randomness (most calls
    /// never do). Atomics rather than a lock, since this is set before every call: the thread
    /// that enters a call is the one that runs it, so relaxed order is enough.
    index: AtomicU64,
    term: AtomicU64,
    position: AtomicU32,
}

impl CallEnvironment {
    /// Sets the time and random seed for a call made in the context of `ctx`.
    pub fn enter(&self, ctx: ApplyContext) {
        self.timestamp_ms.store(ctx.timestamp_ms, Ordering::Relaxed);
        self.index.store(ctx.index, Ordering::Relaxed);
        self.term.store(ctx.term, Ordering::Relaxed);
        self.position.store(ctx.position, Ordering::Relaxed);
    }

    /// The current call's command: its index, term and position.
    fn entry(&self) -> (u64, u64, u32) {
        (
            self.index.load(Ordering::Relaxed),
            self.term.load(Ordering::Relaxed),
            self.position.load(Ordering::Relaxed),
        )
    }

    /// The seed of the current call's random stream.
    fn seed(&self) -> [u8; 32] {
        let (index, term, position) = self.entry();
        let mut seed = Sha256::new()
            .chain_update(b"riteraft random seed v1")
            .chain_update(index.to_le_bytes())
            .chain_update(term.to_le_bytes());
        // The first (or only) command of an entry keeps the seed it had before commands were
        // packed, so that a log written then replays to the same state.
        if position > 0 {
            seed.update(position.to_le_bytes());
        }
        seed.finalize().into()
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.timestamp_ms.load(Ordering::Relaxed))
    }
}

/// `wasi:clocks/wall-clock`: the leader's timestamp of the entry.
pub struct LeaderWallClock(pub Arc<CallEnvironment>);

impl HostWallClock for LeaderWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0.now()
    }
}

/// `wasi:clocks/monotonic-clock`: the same timestamp, in nanoseconds. It does not move during a
/// call, so a plugin measuring elapsed time sees zero: honest, and the same everywhere.
pub struct LeaderMonotonicClock(pub Arc<CallEnvironment>);

impl HostMonotonicClock for LeaderMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.now().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// `wasi:random`: a stream of SHA-256 blocks over (call seed, stream name, counter). Restarted at
/// every call, so the numbers a call sees depend only on its entry.
pub struct EntryRandom {
    environment: Arc<CallEnvironment>,
    /// Tells the secure and insecure streams apart.
    stream: &'static [u8],
    /// The command the current `counter` belongs to; a new command restarts the stream.
    entry: Option<(u64, u64, u32)>,
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl EntryRandom {
    pub fn new(environment: Arc<CallEnvironment>, stream: &'static [u8]) -> Self {
        Self {
            environment,
            stream,
            entry: None,
            seed: [0; 32],
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    fn next_byte(&mut self) -> u8 {
        let entry = self.environment.entry();
        if self.entry != Some(entry) {
            self.entry = Some(entry);
            self.seed = self.environment.seed();
            self.counter = 0;
            self.used = 32;
        }
        if self.used == 32 {
            self.block = Sha256::new()
                .chain_update(self.seed)
                .chain_update(self.stream)
                .chain_update(self.counter.to_le_bytes())
                .finalize()
                .into();
            self.counter += 1;
            self.used = 0;
        }
        self.used += 1;
        self.block[self.used - 1]
    }
}

impl rand_core::TryRng for EntryRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Infallible> {
        for byte in dest {
            *byte = self.next_byte();
        }
        Ok(())
    }
}

/// A guest's stdout or stderr: a buffer capped per call, drained into the host log after each
/// call. Writes never fail (a plugin must not trap because it logged too much); what does not
/// fit is counted and dropped.
#[derive(Clone)]
pub struct GuestOutput {
    buffer: Arc<Mutex<OutputBuffer>>,
    /// Set by a write, cleared by the drain: most calls write nothing, and this spares each
    /// of them the lock (the drain runs after every call).
    written: Arc<AtomicBool>,
}

struct OutputBuffer {
    bytes: Vec<u8>,
    capacity: usize,
    dropped: usize,
}

impl GuestOutput {
    pub fn new(capacity: usize) -> Self {
        Self {
            buffer: Arc::new(Mutex::new(OutputBuffer {
                bytes: Vec::new(),
                capacity,
                dropped: 0,
            })),
            written: Arc::new(AtomicBool::new(false)),
        }
    }

    fn push(&self, bytes: &[u8]) {
        self.written.store(true, Ordering::Relaxed);
        let mut buffer = self.buffer.lock().expect("output lock is never poisoned");
        let room = buffer.capacity.saturating_sub(buffer.bytes.len());
        let kept = bytes.len().min(room);
        buffer.bytes.extend_from_slice(&bytes[..kept]);
        buffer.dropped += bytes.len() - kept;
    }

    /// Logs what the guest wrote during the call, line by line, and returns the text.
    pub fn drain_to_log(&self, stream: &'static str) -> String {
        // Writes come from the guest, on the thread that drains after the call.
        if !self.written.swap(false, Ordering::Relaxed) {
            return String::new();
        }
        let mut buffer = self.buffer.lock().expect("output lock is never poisoned");
        if buffer.bytes.is_empty() && buffer.dropped == 0 {
            return String::new();
        }
        let text = String::from_utf8_lossy(&buffer.bytes).into_owned();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            tracing::info!(target: "riteraft::plugin", stream, "{line}");
        }
        if buffer.dropped > 0 {
            tracing::warn!(target: "riteraft::plugin", stream, dropped = buffer.dropped,
                "plugin output over the per-call limit was dropped");
        }
        buffer.bytes.clear();
        buffer.dropped = 0;
        text
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: overflow is dropped in `push`, not refused.
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
