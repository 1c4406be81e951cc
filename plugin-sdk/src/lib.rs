//! The RiteRaft plugin SDK: write a replicated store as a plain Rust type.
//!
//! Implement [`Store`] for your type (typed commands and queries, encoded with [`Bincode`] or
//! [`Text`]), then call [`export_store!`] once. Compiled for `wasm32-wasip2`, the crate becomes a
//! component that `riteraft-host --plugin` can run; compiled natively, the same type can be tested
//! with [`testing::StoreHarness`], through the very encoding the wasm path uses.
//!
//! ```ignore
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter(u64);
//!
//! impl Store for Counter {
//!     type Codec = Bincode;
//!     type Command = u64;     // add this much
//!     type Output = u64;      // the new total
//!     type Query = ();
//!     type QueryOutput = u64;
//!
//!     fn apply(&mut self, _ctx: &ApplyContext, add: u64) -> Result<u64, String> {
//!         self.0 = self.0.checked_add(add).ok_or("overflow")?;
//!         Ok(self.0)
//!     }
//!     fn query(&self, _: ()) -> Result<u64, String> { Ok(self.0) }
//! }
//!
//! riteraft_plugin_sdk::export_store!(Counter);
//! ```
//!
//! Stores that want the bytes themselves implement [`RawStore`] and use [`export_raw_store!`].
//!
//! Determinism: a store must reach the same state from the same commands on every replica. Use
//! [`ApplyContext::timestamp_ms`] for time, iterate `BTreeMap`s rather than `HashMap`s when the
//! order shows in an output or a snapshot, and never depend on addresses or thread identity.

mod codec;
mod store;
pub mod testing;

pub use codec::{Bincode, Codec, Text};
pub use store::{ApplyContext, RawStore, Store, Typed};

/// Re-exported so stores can derive serde traits without naming the version we build against.
pub use serde;

/// The bindings generated from `proto/store.wit`. Not part of the API: use [`export_store!`].
#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../proto/store.wit",
        world: "versioned-store",
        pub_export_macro: true,
        export_macro_name: "__export_store_world",
        default_bindings_module: "riteraft_plugin_sdk::__bindings",
    });

    impl From<ApplyContext> for crate::ApplyContext {
        fn from(ctx: ApplyContext) -> Self {
            crate::ApplyContext {
                index: ctx.index,
                position: ctx.position,
                term: ctx.term,
                timestamp_ms: ctx.timestamp_ms,
            }
        }
    }
}

/// The functions the export macros call. Not part of the API.
#[doc(hidden)]
pub mod __glue {
    pub use crate::store::{apply, query, restore, snapshot};
    #[cfg(target_arch = "wasm32")]
    pub use crate::store::{restore_from_host, snapshot_to_host};

    /// Sends panic messages to stderr in one line, where the host picks them up and puts them
    /// into the error that the failed call returns (a panic in wasm is a trap, not an unwind).
    pub fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let message = crate::store::panic_message(info.payload());
                match info.location() {
                    Some(at) => eprintln!("panicked at {}:{}: {message}", at.file(), at.line()),
                    None => eprintln!("panicked: {message}"),
                }
            }));
        });
    }
}

/// Exports a [`Store`] as the plugin's implementation of the `riteraft:store` world.
///
/// Call it once, at the top level of the plugin crate, with the store's type. The store starts
/// as `Default::default()` and is replaced on `restore`.
#[macro_export]
macro_rules! export_store {
    ($store:ty) => {
        $crate::export_raw_store!($crate::Typed<$store>);
    };
}

/// Exports a [`RawStore`], which handles the encoded bytes itself.
#[macro_export]
macro_rules! export_raw_store {
    ($store:ty) => {
        // Checked on every target, so a type that is not a store fails `cargo check` natively too.
        const _: fn() = || {
            fn must_be_a_store<S: $crate::RawStore>() {}
            must_be_a_store::<$store>();
        };

        // Only a wasm build exports the world: natively the crate is an ordinary library, so a
        // host or a test can link several stores without their symbols colliding.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __RiteraftPlugin;

            ::std::thread_local! {
                static STORE: ::std::cell::RefCell<::std::option::Option<$store>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            impl $crate::__bindings::Guest for __RiteraftPlugin {
                fn apply(
                    ctx: $crate::__bindings::ApplyContext,
                    entry: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::__glue::install_panic_hook();
                    STORE.with(|slot| $crate::__glue::apply(slot, &ctx.into(), &entry))
                }

                fn query(
                    request: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::__glue::install_panic_hook();
                    STORE.with(|slot| $crate::__glue::query(slot, &request))
                }

                fn snapshot() -> ::std::vec::Vec<u8> {
                    $crate::__glue::install_panic_hook();
                    STORE.with(|slot| $crate::__glue::snapshot_to_host(slot))
                }

                fn restore(
                    snapshot: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__glue::install_panic_hook();
                    STORE.with(|slot| $crate::__glue::restore_from_host(slot, &snapshot))
                }

                fn version() -> ::std::string::String {
                    <$store as $crate::RawStore>::VERSION.to_string()
                }
            }

            $crate::__bindings::__export_store_world!(
                __RiteraftPlugin with_types_in $crate::__bindings
            );
        };
    };
}
