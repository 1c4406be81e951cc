//! Two replicas fed the same log must end byte-identical, whatever the plugin looks at.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use riteraft_host::plugin::{PluginLimits, PluginRuntime};
use riteraft_host::state_machine::{ApplyContext, StateMachine};
use riteraft_host::wasm_state_machine::{ReplayLimits, WasmStateMachine};
use riteraft_test_support::plugin;

const ENTRIES: u64 = 10_000;

/// A replica: its own engine and instance, as on another node.
fn replica(name: &str) -> WasmStateMachine {
    let limits = PluginLimits {
        fuel_per_call: 50_000_000,
        memory_bytes: 64 << 20,
        ..PluginLimits::default()
    };
    let runtime = Arc::new(PluginRuntime::new(limits).unwrap());
    let module = runtime.load_file(&plugin(name)).unwrap();
    WasmStateMachine::new(runtime, module, ReplayLimits::default()).unwrap()
}

/// A random log: (context, entry) pairs from a seeded generator.
fn log(seed: u64, mut entry: impl FnMut(&mut StdRng) -> Vec<u8>) -> Vec<(ApplyContext, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut timestamp_ms = 1_700_000_000_000;
    (1..=ENTRIES)
        .map(|index| {
            timestamp_ms += rng.random_range(0..50);
            let ctx = ApplyContext {
                index,
                position: 0,
                term: 1 + index / 1000,
                timestamp_ms,
            };
            (ctx, entry(&mut rng))
        })
        .collect()
}

/// Feeds `log` to two replicas (the second restarted from a mid-log snapshot) and compares
/// every outcome and the final snapshots.
fn assert_replicas_agree(name: &str, log: &[(ApplyContext, Vec<u8>)]) {
    let mut a = replica(name);
    let mut b = replica(name);
    let half = log.len() / 2;
    for (i, (ctx, entry)) in log.iter().enumerate() {
        let outcome_a = a.apply(*ctx, entry).unwrap();
        let outcome_b = b.apply(*ctx, entry).unwrap();
        assert_eq!(
            outcome_a, outcome_b,
            "entry {} gave different answers",
            ctx.index
        );
        if i == half {
            // Replica b "restarts": a new instance restored from its own snapshot.
            let snapshot = b.snapshot().unwrap();
            b = replica(name);
            b.restore(&snapshot).unwrap();
        }
    }
    let (snapshot_a, snapshot_b) = (a.snapshot().unwrap(), b.snapshot().unwrap());
    assert!(
        snapshot_a == snapshot_b,
        "snapshots differ ({} and {} bytes)",
        snapshot_a.len(),
        snapshot_b.len()
    );
}

#[test]
fn kv_replicas_agree_over_random_writes() {
    let log = log(1, |rng| {
        let key = rng.random_range(0..500);
        match rng.random_range(0..10) {
            0..=6 => format!("put k{key} v{}", rng.random::<u32>()).into_bytes(),
            7..=8 => format!("del k{key}").into_bytes(),
            _ => b"garbage \xff".to_vec(),
        }
    });
    assert_replicas_agree("kv", &log);
}

#[test]
fn clock_and_random_reading_replicas_agree() {
    let log = log(2, |rng| {
        // bincode of a Vec<u8>: a length then the bytes.
        let len = rng.random_range(0..16u8);
        let mut entry = vec![len];
        entry.extend((0..len).map(|_| rng.random::<u8>()));
        entry
    });
    assert_replicas_agree("clock-random", &log);

    // And what the plugin saw is the leader's time, not the host's.
    let mut sm = replica("clock-random");
    let (ctx, entry) = &log[0];
    sm.apply(*ctx, entry).unwrap().unwrap();
    let seen = sm.snapshot().unwrap();
    let wall_ms = ctx.timestamp_ms as u128;
    assert!(
        seen.windows(16).any(|w| w == wall_ms.to_le_bytes())
            || contains_varint(&seen, ctx.timestamp_ms),
        "the plugin's wall clock did not read the entry's timestamp"
    );
}

#[test]
fn packed_commands_see_random_numbers_of_their_own_and_the_first_keeps_the_old_seed() {
    let mut sm = replica("clock-random");
    let command = [0u8]; // bincode of an empty Vec<u8>
    let at = |position| ApplyContext {
        index: 7,
        position,
        term: 2,
        timestamp_ms: 1_700_000_000_000,
    };
    let answers: Vec<Vec<u8>> = (0..3)
        .map(|position| sm.apply(at(position), &command).unwrap().unwrap())
        .collect();
    assert_ne!(answers[0], answers[1]);
    assert_ne!(answers[1], answers[2]);
    // The seed of position 0 is the one every entry had before commands were packed (sha256
    // of a label, the index and the term; the stream is sha256 of seed, name and counter), so
    // a log written then replays to the same state.
    use sha2::{Digest, Sha256};
    let seed = Sha256::new()
        .chain_update(b"riteraft random seed v1")
        .chain_update(7u64.to_le_bytes())
        .chain_update(2u64.to_le_bytes())
        .finalize();
    let block = Sha256::new()
        .chain_update(seed)
        .chain_update(b"secure")
        .chain_update(0u64.to_le_bytes())
        .finalize();
    // The answer is the u64 as bincode writes it: a tag for "8 bytes follow", then them.
    let mut expected = vec![253u8];
    expected.extend_from_slice(&block[..8]);
    assert_eq!(answers[0], expected);
}

/// bincode's standard config writes integers as varints: 251 tag for u128 > u64 range etc.
fn contains_varint(bytes: &[u8], value: u64) -> bool {
    let mut encoded = vec![253u8];
    encoded.extend_from_slice(&value.to_le_bytes());
    bytes
        .windows(encoded.len())
        .any(|w| w == encoded.as_slice())
}

#[test]
fn replicas_agree_when_entries_trap() {
    let log = log(3, |rng| match rng.random_range(0..100) {
        0 => b"panic".to_vec(),
        1 => b"hog".to_vec(),
        _ => format!("add {}", rng.random_range(0..1000)).into_bytes(),
    });
    // Fewer entries: each trap costs a rebuild with replay.
    assert_replicas_agree("misbehaving", &log[..2000]);
}
