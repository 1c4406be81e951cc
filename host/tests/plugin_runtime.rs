//! The plugin runtime against real wasm plugins: loading errors, the sandbox's limits, recovery
//! after traps, and determinism.

use std::sync::Arc;

use riteraft_host::module_store::HashedModule;
use riteraft_host::plugin::{Contract, LoadError, PluginLimits, PluginRuntime};
use riteraft_host::state_machine::{ApplyContext, Rejection, StateMachine};
use riteraft_host::wasm_state_machine::{ReplayLimits, WasmStateMachine};
use riteraft_test_support::plugin;
use riteraft_test_support::tmpfs::{Tmpfs, fill_until_free, free_bytes};

/// Small limits so the misbehaving plugin hits them quickly.
fn test_limits() -> PluginLimits {
    PluginLimits {
        fuel_per_call: 50_000_000,
        memory_bytes: 64 << 20,
        ..PluginLimits::default()
    }
}

fn runtime() -> Arc<PluginRuntime> {
    Arc::new(PluginRuntime::new(test_limits()).unwrap())
}

fn machine(runtime: &Arc<PluginRuntime>, name: &str) -> WasmStateMachine {
    let module = runtime.load_file(&plugin(name)).unwrap();
    WasmStateMachine::new(runtime.clone(), module, ReplayLimits::default()).unwrap()
}

fn ctx(index: u64) -> ApplyContext {
    ApplyContext {
        index,
        position: 0,
        term: 1,
        timestamp_ms: 1_700_000_000_000 + index,
    }
}

fn text(outcome: Result<Vec<u8>, Rejection>) -> Result<String, Rejection> {
    outcome.map(|bytes| String::from_utf8(bytes).unwrap())
}

#[test]
fn each_bad_file_gets_a_named_error() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();

    let missing = runtime
        .load_file(&dir.path().join("nope.wasm"))
        .unwrap_err();
    assert!(matches!(missing, LoadError::Read { .. }), "{missing}");

    let not_wasm = runtime.load(b"#!/bin/sh\necho hello\n").unwrap_err();
    assert!(matches!(not_wasm, LoadError::NotWasm), "{not_wasm}");

    // The smallest valid core module: magic and version 1, no sections.
    let core = runtime.load(b"\0asm\x01\0\0\0").unwrap_err();
    assert!(matches!(core, LoadError::CoreModule), "{core}");
    assert!(core.to_string().contains("wasm32-wasip2"), "{core}");

    let mut truncated = std::fs::read(plugin("kv")).unwrap();
    truncated.truncate(truncated.len() / 2);
    let invalid = runtime.load(&truncated).unwrap_err();
    assert!(matches!(invalid, LoadError::Invalid(_)), "{invalid}");

    let missing_export = runtime.load_file(&plugin("missing-export")).unwrap_err();
    assert!(
        matches!(missing_export, LoadError::MissingExport("query")),
        "{missing_export}"
    );
    assert!(missing_export.to_string().contains("`query`"));

    let wrong = runtime.load_file(&plugin("wrong-signature")).unwrap_err();
    assert!(
        matches!(wrong, LoadError::WrongSignature { name: "query", .. }),
        "{wrong}"
    );

    let small = PluginRuntime::new(PluginLimits {
        module_bytes: 1024,
        ..test_limits()
    })
    .unwrap();
    let too_large = small.load_file(&plugin("kv")).unwrap_err();
    assert!(
        matches!(too_large, LoadError::TooLarge { .. }),
        "{too_large}"
    );
}

#[test]
fn a_panic_is_an_error_with_its_message_and_has_no_effect() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "misbehaving");
    assert_eq!(text(sm.apply(ctx(1), b"add 2").unwrap()), Ok("2".into()));
    let rejection = sm.apply(ctx(2), b"panic").unwrap().unwrap_err();
    match &rejection {
        Rejection::Trapped(message) => assert!(message.contains("asked to panic"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(text(sm.apply(ctx(3), b"add 3").unwrap()), Ok("5".into()));
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("5".into()));
    assert_eq!(sm.rebuilds(), 1);
}

#[test]
fn an_endless_loop_runs_out_of_fuel_and_the_store_goes_on() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "misbehaving");
    sm.apply(ctx(1), b"add 1").unwrap().unwrap();
    let rejection = sm.apply(ctx(2), b"spin").unwrap().unwrap_err();
    assert_eq!(rejection, Rejection::OutOfFuel(test_limits().fuel_per_call));
    // A query that loops is stopped the same way, and changes nothing.
    let rejection = sm.query(b"spin").unwrap().unwrap_err();
    assert!(
        matches!(rejection, Rejection::OutOfFuel(_)),
        "{rejection:?}"
    );
    assert_eq!(text(sm.apply(ctx(3), b"add 1").unwrap()), Ok("2".into()));
}

#[test]
fn unbounded_allocation_hits_the_memory_cap_and_the_store_goes_on() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "misbehaving");
    sm.apply(ctx(1), b"add 7").unwrap().unwrap();
    let rejection = sm.apply(ctx(2), b"hog").unwrap().unwrap_err();
    assert_eq!(
        rejection,
        Rejection::OutOfMemory(test_limits().memory_bytes)
    );
    let rejection = sm.query(b"hog").unwrap().unwrap_err();
    assert_eq!(
        rejection,
        Rejection::OutOfMemory(test_limits().memory_bytes)
    );
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("7".into()));
}

#[test]
fn a_trap_after_a_checkpoint_rebuilds_from_checkpoint_plus_replay() {
    let runtime = runtime();
    let module = runtime.load_file(&plugin("misbehaving")).unwrap();
    let limits = ReplayLimits {
        max_entries: 3,
        max_bytes: usize::MAX,
    };
    let mut sm = WasmStateMachine::new(runtime.clone(), module, limits).unwrap();
    for i in 1..=7 {
        sm.apply(ctx(i), b"add 1").unwrap().unwrap();
        // At its limit it asks the node for a snapshot; at twice it checkpoints by itself.
        assert_eq!(sm.wants_snapshot(), (3..6).contains(&i), "after entry {i}");
    }
    sm.apply(ctx(8), b"panic").unwrap().unwrap_err();
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("7".into()));
}

#[test]
fn a_plugin_written_without_the_sdk_runs() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "bare-wit");
    sm.apply(ctx(1), &40u64.to_le_bytes()).unwrap().unwrap();
    let out = sm.apply(ctx(2), &2u64.to_le_bytes()).unwrap().unwrap();
    assert_eq!(out, 42u64.to_le_bytes());
    let err = sm.apply(ctx(3), b"short").unwrap().unwrap_err();
    assert_eq!(err, Rejection::Store("expected 8 bytes, got 5".into()));
    let snapshot = sm.snapshot().unwrap();
    let mut copy = machine(&runtime, "bare-wit");
    copy.restore(&snapshot).unwrap();
    assert_eq!(copy.query(b"").unwrap().unwrap(), 42u64.to_le_bytes());
}

#[test]
fn a_plugin_built_for_the_first_contract_loads_and_is_given_no_packed_commands() {
    let runtime = runtime();
    // bare-wit is built against proto/store-0.1.0.wit; the SDK's plugins against store.wit.
    let bare = runtime.load_file(&plugin("bare-wit")).unwrap();
    assert_eq!(bare.contract(), Contract::V0_1);
    assert!(!machine(&runtime, "bare-wit").packs_commands());
    let kv = runtime.load_file(&plugin("kv")).unwrap();
    assert_eq!(kv.contract(), Contract::V0_2);
    assert!(machine(&runtime, "kv").packs_commands());
}

#[test]
fn a_snapshot_that_does_not_restore_keeps_the_old_state() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "bare-wit");
    sm.apply(ctx(1), &5u64.to_le_bytes()).unwrap().unwrap();
    let err = (sm.restore(&bytes::Bytes::from_static(b"not a snapshot"))).unwrap_err();
    assert!(err.to_string().contains("expected 8 bytes"), "{err}");
    assert_eq!(sm.query(b"").unwrap().unwrap(), 5u64.to_le_bytes());
}

#[test]
fn once_the_checkpoint_is_saved_a_rebuild_reads_it_back_instead_of_a_copy() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runtime = runtime();
    let mut sm = machine(&runtime, "misbehaving");
    for i in 1..=3 {
        sm.apply(ctx(i), b"add 1").unwrap().unwrap();
    }
    let saved = sm.snapshot().unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    sm.checkpoint_saved(Box::new({
        let reads = reads.clone();
        move || {
            reads.fetch_add(1, Ordering::Relaxed);
            Ok(saved.clone())
        }
    }));
    sm.apply(ctx(4), b"add 2").unwrap().unwrap();
    sm.apply(ctx(5), b"panic").unwrap().unwrap_err();
    assert_eq!(reads.load(Ordering::Relaxed), 1, "one rebuild, one read");
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("5".into()));

    // A checkpoint that cannot be read back leaves the replica broken, and says why.
    sm.snapshot().unwrap();
    sm.checkpoint_saved(Box::new(|| Err("snapshot file gone".into())));
    let error = sm.apply(ctx(6), b"panic").unwrap_err().to_string();
    assert!(error.contains("snapshot file gone"), "{error}");
}

/// A snapshot streamed to the node's file leaves no copy in memory: until the node says the
/// file is durable, a rebuild starts from the checkpoint before it and replays every entry
/// since; after, from the file, replaying only what came after the snapshot. The same with
/// the entries to replay in a file of their own, as a node keeps them.
#[test]
fn a_streamed_snapshot_keeps_its_entries_for_replay_until_it_is_saved() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let runtime = runtime();
    let mut sm = machine(&runtime, "misbehaving");
    for i in 1..=3 {
        sm.apply(ctx(i), b"add 1").unwrap().unwrap();
    }
    let streamed = Arc::new(Mutex::new(Vec::new()));
    sm.write_snapshot(Box::new(Shared(streamed.clone())))
        .unwrap();
    let streamed = streamed.lock().unwrap().clone();
    assert_eq!(
        streamed,
        sm.snapshot().unwrap(),
        "the same bytes as `snapshot`"
    );

    // The entries to replay kept in memory, and in a file (as a node keeps them).
    let dir = tempfile::tempdir().unwrap();
    for in_file in [false, true] {
        let mut sm = machine(&runtime, "misbehaving");
        if in_file {
            sm.keep_recovery_data_in(dir.path(), 0).unwrap();
        }
        for i in 1..=3 {
            sm.apply(ctx(i), b"add 1").unwrap().unwrap();
        }
        sm.write_snapshot(Box::new(std::io::sink())).unwrap();
        sm.apply(ctx(4), b"add 2").unwrap().unwrap();
        sm.apply(ctx(5), b"panic").unwrap().unwrap_err();
        assert_eq!(text(sm.query(b"total").unwrap()), Ok("5".into()));

        let reads = Arc::new(AtomicUsize::new(0));
        sm.checkpoint_saved(Box::new({
            let (reads, streamed) = (reads.clone(), streamed.clone());
            move || {
                reads.fetch_add(1, Ordering::Relaxed);
                Ok(streamed.clone().into())
            }
        }));
        sm.apply(ctx(6), b"add 1").unwrap().unwrap();
        sm.apply(ctx(7), b"panic").unwrap().unwrap_err();
        // From the file (3), then entries 4 and 6 only: 3 + 2 + 1.
        assert_eq!(text(sm.query(b"total").unwrap()), Ok("6".into()));
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one rebuild, one read");
        sm.apply(ctx(8), b"add 1").unwrap().unwrap();
        sm.apply(ctx(9), b"panic").unwrap().unwrap_err();
        assert_eq!(text(sm.query(b"total").unwrap()), Ok("7".into()));
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file left"
    );
}

/// On a disk that fills up, the file of entries kept to replay after a trap can take no more:
/// the state so far becomes the checkpoint and later entries are kept in memory. The node sees
/// no error, the disk gets its space back, and a trap after that loses nothing.
#[test]
fn a_replay_file_on_a_filling_disk_gives_way_to_memory_and_loses_nothing() {
    let Some(disk) = Tmpfs::mount_or_skip(16) else {
        return;
    };
    let runtime = runtime();
    let mut sm = machine(&runtime, "misbehaving");
    sm.keep_recovery_data_in(disk.path(), 4 << 20).unwrap();
    sm.apply(ctx(1), b"add 1").unwrap().unwrap();
    fill_until_free(disk.path(), &disk.path().join("filler"), 2 << 20);
    // 64 KiB commands (`add 1` padded with spaces, which the plugin trims): 2.4 MiB in all,
    // more than the disk has, and the file checks the space it leaves once a MiB.
    let mut padded = b"add 1".to_vec();
    padded.resize(64 << 10, b' ');
    for i in 2..=40 {
        assert_eq!(text(sm.apply(ctx(i), &padded).unwrap()), Ok(i.to_string()));
    }
    assert!(
        free_bytes(disk.path()) > 1 << 20,
        "the replay file should have been dropped, leaving the disk its space: {} bytes free",
        free_bytes(disk.path())
    );
    sm.apply(ctx(41), b"panic").unwrap().unwrap_err();
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("40".into()));
    sm.apply(ctx(42), b"add 2").unwrap().unwrap();
    sm.apply(ctx(43), b"panic").unwrap().unwrap_err();
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("42".into()));
}

/// The node writes its snapshot on another thread, so the word that it is durable can come
/// after the state machine checkpointed by itself: the newer checkpoint must win, or a rebuild
/// would restore the older state and replay only what came after the newer one.
#[test]
fn a_checkpoint_saved_late_does_not_replace_a_newer_one() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runtime = runtime();
    let module = runtime.load_file(&plugin("misbehaving")).unwrap();
    let limits = ReplayLimits {
        max_entries: 2,
        max_bytes: usize::MAX,
    };
    let mut sm = WasmStateMachine::new(runtime.clone(), module, limits).unwrap();
    for i in 1..=3 {
        sm.apply(ctx(i), b"add 1").unwrap().unwrap();
    }
    let taken_at_3 = sm.snapshot().unwrap();
    // Four more entries: twice the limit, so the state machine checkpoints by itself (at 7).
    for i in 4..=7 {
        sm.apply(ctx(i), b"add 1").unwrap().unwrap();
    }
    let reads = Arc::new(AtomicUsize::new(0));
    sm.checkpoint_saved(Box::new({
        let reads = reads.clone();
        move || {
            reads.fetch_add(1, Ordering::Relaxed);
            Ok(taken_at_3.clone())
        }
    }));
    sm.apply(ctx(8), b"add 1").unwrap().unwrap();
    sm.apply(ctx(9), b"panic").unwrap().unwrap_err();
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("8".into()));
    assert_eq!(
        reads.load(Ordering::Relaxed),
        0,
        "the older checkpoint is not read"
    );
}

/// An upgrade to code that cannot read the current state is refused; the entries applied
/// before it must still be replayed after a later trap.
#[test]
fn a_refused_upgrade_keeps_what_a_rebuild_replays() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "misbehaving");
    for i in 1..=3 {
        sm.apply(ctx(i), b"add 1").unwrap().unwrap();
    }
    let other = HashedModule::new(Arc::new(std::fs::read(plugin("kv")).unwrap()));
    let refused = sm.upgrade(&other).unwrap();
    assert!(
        refused.is_err(),
        "kv cannot read the misbehaving store's state"
    );
    sm.apply(ctx(4), b"add 1").unwrap().unwrap();
    sm.apply(ctx(5), b"panic").unwrap().unwrap_err();
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("4".into()));
}

#[test]
fn the_snapshot_imports_trap_outside_their_calls() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "misbehaving");
    sm.apply(ctx(1), b"add 2").unwrap().unwrap();
    let rejection = sm.apply(ctx(2), b"stream").unwrap().unwrap_err();
    match &rejection {
        Rejection::Trapped(message) => {
            assert!(message.contains("outside `snapshot`"), "{message}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(text(sm.query(b"total").unwrap()), Ok("2".into()));
}

/// SDK plugins stream their snapshots through the host in pieces: a store of many pieces'
/// worth round-trips byte for byte, and so does a restored copy's own snapshot.
#[test]
fn a_large_snapshot_streams_out_and_back_in() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "kv");
    let value = "v".repeat(1000);
    for i in 1..=3000u64 {
        let put = format!("put key{i} {value}");
        sm.apply(ctx(i), put.as_bytes()).unwrap().unwrap();
    }
    let snapshot = sm.snapshot().unwrap();
    assert!(snapshot.len() > 3_000_000, "{} bytes", snapshot.len());
    let mut copy = machine(&runtime, "kv");
    copy.restore(&snapshot).unwrap();
    assert_eq!(text(copy.query(b"get key2999").unwrap()), Ok(value.clone()));
    assert_eq!(copy.snapshot().unwrap(), snapshot);
    // A damaged snapshot is refused with the reader's reason, and the copy keeps its state.
    let error = (copy.restore(&snapshot.slice(..snapshot.len() / 2))).unwrap_err();
    assert!(error.to_string().contains("snapshot"), "{error}");
    assert_eq!(text(copy.query(b"get key1").unwrap()), Ok(value));
}

/// The runtime with the compiled-module cache in `dir`.
fn cached_runtime(dir: &std::path::Path) -> Arc<PluginRuntime> {
    Arc::new(
        PluginRuntime::new(test_limits())
            .unwrap()
            .with_compiled_cache(dir.to_path_buf()),
    )
}

fn cached_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let sha256 = sha256_hex(&std::fs::read(plugin(name)).unwrap());
    dir.join(format!("{sha256}.cwasm"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn compiled_modules_are_loaded_from_the_cache_and_a_damaged_one_is_compiled_again() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = cached_runtime(dir.path());
    machine(&runtime, "bare-wit");
    let bare = cached_file(dir.path(), "bare-wit");
    assert!(bare.exists(), "compiling stores the compiled form");

    // Proof that a load takes the compiled form from the cache: kv's entry holding bare-wit's
    // code makes "kv" answer as bare-wit does.
    let kv = cached_file(dir.path(), "kv");
    std::fs::rename(&bare, &kv).unwrap();
    let mut sm = machine(&cached_runtime(dir.path()), "kv");
    let out = sm.apply(ctx(1), &42u64.to_le_bytes()).unwrap().unwrap();
    assert_eq!(out, 42u64.to_le_bytes(), "the cached code ran");

    // A damaged file (one bit) is not used: it is compiled again, and replaced.
    let mut file = std::fs::read(&kv).unwrap();
    *file.last_mut().unwrap() ^= 1;
    std::fs::write(&kv, &file).unwrap();
    let mut sm = machine(&cached_runtime(dir.path()), "kv");
    let out = text(sm.apply(ctx(1), b"put a 1").unwrap()).unwrap();
    assert!(out.contains('a'), "kv's own code ran: {out}");
    let mut sm = machine(&cached_runtime(dir.path()), "kv");
    assert!(
        text(sm.apply(ctx(1), b"put a 1").unwrap()).is_ok(),
        "stored again"
    );
    assert_ne!(
        std::fs::read(&kv).unwrap(),
        file,
        "the damaged file was replaced"
    );
}

#[test]
fn the_compiled_module_cache_keeps_the_eight_most_recent() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = cached_runtime(dir.path());
    let kv = std::fs::read(plugin("kv")).unwrap();
    // Ten different modules: kv with a custom section naming each (section 0, then the
    // section's size, the name's size and the name), which changes the bytes, not the code.
    for i in 0..10u8 {
        let mut module = kv.clone();
        module.extend_from_slice(&[0, 3, 2, b'v', b'0' + i]);
        runtime.load(&module).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 8, "the cache was pruned to its limit");
}

#[test]
fn a_foreign_import_loads_and_traps_only_when_called_the_same_way_every_time() {
    let runtime = runtime();
    let mut sm = machine(&runtime, "foreign-import");
    assert_eq!(text(sm.apply(ctx(1), b"hello").unwrap()).unwrap(), "hello");
    let called = sm.apply(ctx(2), b"call").unwrap().unwrap_err();
    let Rejection::Trapped(message) = &called else {
        panic!("a call to the missing import traps: {called:?}");
    };
    assert!(
        message.contains("network#send"),
        "names the import: {message}"
    );
    // The store goes on (rebuilt from its checkpoint plus replay), and a replica applying the
    // same entries fails the same way.
    assert_eq!(text(sm.apply(ctx(3), b"again").unwrap()).unwrap(), "again");
    let mut other = machine(&runtime, "foreign-import");
    other.apply(ctx(1), b"hello").unwrap().unwrap();
    assert_eq!(other.apply(ctx(2), b"call").unwrap().unwrap_err(), called);
}
