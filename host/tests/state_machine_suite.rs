//! One suite for every `StateMachine` implementation: the contract in `state_machine.rs`,
//! checked against the native `kv` and the `kv` plugin alike.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kv::KvStore;
use riteraft_host::plugin::{PluginLimits, PluginRuntime};
use riteraft_host::state_machine::{ApplyContext, NativeStateMachine, Rejection, StateMachine};
use riteraft_host::wasm_state_machine::{ReplayLimits, WasmStateMachine};
use riteraft_plugin_sdk::Typed;
use riteraft_test_support::plugin;

fn native() -> NativeStateMachine<Typed<KvStore>> {
    NativeStateMachine::new()
}

fn wasm() -> WasmStateMachine {
    let runtime = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let module = runtime.load_file(&plugin("kv")).unwrap();
    WasmStateMachine::new(runtime, module, ReplayLimits::default()).unwrap()
}

/// Runs every check of the suite against state machines made by `make`.
fn suite<M: StateMachine>(make: impl Fn() -> M) {
    applies_in_order_and_answers(make());
    rejections_are_answers_and_change_nothing(make());
    queries_do_not_change_state(make());
    snapshot_restores_the_same_state(&make);
    a_written_snapshot_is_the_snapshot(&make);
    a_bad_snapshot_keeps_the_old_state(make());
}

fn ctx(index: u64) -> ApplyContext {
    ApplyContext {
        index,
        position: 0,
        term: 1,
        timestamp_ms: index * 10,
    }
}

fn apply<M: StateMachine>(sm: &mut M, index: u64, entry: &str) -> Result<String, Rejection> {
    let outcome = sm
        .apply(ctx(index), entry.as_bytes())
        .expect("not a fatal error");
    outcome.map(|bytes| String::from_utf8(bytes).unwrap())
}

fn query<M: StateMachine>(sm: &mut M, request: &str) -> Result<String, Rejection> {
    let outcome = sm.query(request.as_bytes()).expect("not a fatal error");
    outcome.map(|bytes| String::from_utf8(bytes).unwrap())
}

fn applies_in_order_and_answers<M: StateMachine>(mut sm: M) {
    assert_eq!(apply(&mut sm, 1, "put a 1"), Ok("ok: a = 1 (new)".into()));
    assert_eq!(apply(&mut sm, 2, "put a 2"), Ok("ok: a = 2 (was 1)".into()));
    assert_eq!(query(&mut sm, "get a"), Ok("2".into()));
}

fn rejections_are_answers_and_change_nothing<M: StateMachine>(mut sm: M) {
    apply(&mut sm, 1, "put a 1").unwrap();
    assert_eq!(
        apply(&mut sm, 2, "del zzz"),
        Err(Rejection::Store("no such key: zzz".into()))
    );
    let garbage = sm.apply(ctx(3), &[0xff, 0x00]).unwrap().unwrap_err();
    assert!(
        matches!(garbage, Rejection::Store(ref m) if m.contains("UTF-8")),
        "{garbage:?}"
    );
    assert_eq!(query(&mut sm, "keys"), Ok("a".into()));
}

fn queries_do_not_change_state<M: StateMachine>(mut sm: M) {
    apply(&mut sm, 1, "put k v").unwrap();
    let before = sm.snapshot().unwrap();
    query(&mut sm, "get k").unwrap();
    query(&mut sm, "get missing").unwrap_err();
    query(&mut sm, "nonsense").unwrap_err();
    assert_eq!(sm.snapshot().unwrap(), before);
}

fn snapshot_restores_the_same_state<M: StateMachine>(make: &impl Fn() -> M) {
    let mut a = make();
    for i in 1..=100 {
        apply(&mut a, i, &format!("put key{} value {}", i % 17, i)).unwrap();
    }
    let snapshot = a.snapshot().unwrap();
    let mut b = make();
    b.restore(&snapshot).unwrap();
    assert_eq!(b.snapshot().unwrap(), snapshot);
    assert_eq!(query(&mut b, "get key3"), query(&mut a, "get key3"));
    // And both go on identically.
    assert_eq!(
        apply(&mut a, 101, "del key3"),
        apply(&mut b, 101, "del key3")
    );
    assert_eq!(a.snapshot().unwrap(), b.snapshot().unwrap());
}

/// What `write_snapshot` hands on is what `snapshot` returns, and restores the same state.
fn a_written_snapshot_is_the_snapshot<M: StateMachine>(make: &impl Fn() -> M) {
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut a = make();
    for i in 1..=100 {
        apply(
            &mut a,
            i,
            &format!("put key{i} {}", "v".repeat(i as usize * 50)),
        )
        .unwrap();
    }
    let written = Arc::new(Mutex::new(Vec::new()));
    a.write_snapshot(Box::new(Shared(written.clone()))).unwrap();
    let written = written.lock().unwrap().clone();
    assert!(written == a.snapshot().unwrap(), "the same bytes");
    let mut b = make();
    b.restore(&written.into()).unwrap();
    assert_eq!(query(&mut b, "get key77"), query(&mut a, "get key77"));
}

fn a_bad_snapshot_keeps_the_old_state<M: StateMachine>(mut sm: M) {
    apply(&mut sm, 1, "put x 1").unwrap();
    let garbage = bytes::Bytes::from_static(b"\xff\xff\xff\xff not a snapshot");
    assert!(sm.restore(&garbage).is_err());
    assert_eq!(query(&mut sm, "get x"), Ok("1".into()));
}

#[test]
fn native_kv_meets_the_contract() {
    suite(native);
}

#[test]
fn wasm_kv_meets_the_contract() {
    suite(wasm);
}

#[test]
fn native_and_wasm_kv_give_identical_snapshots() {
    let (mut n, mut w) = (native(), wasm());
    for i in 1..=500 {
        let entry = format!("put k{} {}", i % 37, i * 7);
        assert_eq!(apply(&mut n, i, &entry), apply(&mut w, i, &entry));
    }
    assert_eq!(n.snapshot().unwrap(), w.snapshot().unwrap());
}
