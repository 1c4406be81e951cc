//! {{name}}: a RiteRaft store. [`Store`] holds the logic (tested with `cargo test`); the
//! `component` module binds it to RiteRaft's contract, `wit/store.wit` (world `store`).

mod store;

pub use store::Store;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use super::Store;

    wit_bindgen::generate!({ path: "wit", world: "store" });

    thread_local! {
        // One instance per replica: RiteRaft calls the exports one at a time, in log order.
        static STORE: RefCell<Store> = RefCell::new(Store::default());
    }

    struct Component;

    impl Guest for Component {
        fn apply(_ctx: ApplyContext, entry: Vec<u8>) -> Result<Vec<u8>, String> {
            STORE.with_borrow_mut(|store| store.apply(&entry))
        }

        fn query(request: Vec<u8>) -> Result<Vec<u8>, String> {
            STORE.with_borrow(|store| store.query(&request))
        }

        fn snapshot() -> Vec<u8> {
            STORE.with_borrow(Store::snapshot)
        }

        fn restore(snapshot: Vec<u8>) -> Result<(), String> {
            let restored = Store::restore(&snapshot)?;
            STORE.set(restored);
            Ok(())
        }
    }

    export!(Component);
}
