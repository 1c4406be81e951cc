//! The versions of the store contract (`proto/store.wit`) a plugin may be built for, and the
//! four calls on either. 0.2.0 added `position` to `apply-context`, for commands packed into
//! one log entry; a plugin built for 0.1.0 (`proto/store-0.1.0.wit`) keeps loading and running,
//! and the node packs no commands together while it runs (see [`Contract::packs_commands`]).
//!
//! The exports of both worlds are plain functions, checked by their types: a component whose
//! `apply` takes the 0.2.0 record is a 0.2.0 plugin, one whose `apply` takes the 0.1.0 record is
//! a 0.1.0 plugin, and anything else is refused with the current contract's error.

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::instance::Sandbox;
use crate::state_machine::ApplyContext;

mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../proto/store-0.1.0.wit",
        world: "store",
    });
}

mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../proto/store.wit",
        world: "store",
    });
}

/// Which contract a module was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `riteraft:store@0.1.0`: one command per `apply` index.
    V0_1,
    /// `riteraft:store@0.2.0`: `apply-context` has the command's position in its entry.
    V0_2,
}

impl Contract {
    /// Whether a plugin built for this contract may be given several commands of one entry:
    /// only one that sees their positions can tell them apart (a 0.1.0 plugin was promised an
    /// index of its own for every command, and its random numbers are seeded by it).
    pub fn packs_commands(self) -> bool {
        self == Contract::V0_2
    }
}

/// A module linked and type-checked against the contract it was built for.
#[derive(Clone)]
pub(super) enum ContractPre {
    V0_1(v0_1::StorePre<Sandbox>),
    V0_2(v0_2::StorePre<Sandbox>),
}

impl ContractPre {
    /// Checks `instance_pre`'s exports against the current contract, then the first one. When
    /// neither fits, the error is the first contract's if its `apply` fitted (the plugin was
    /// built for it, and something else is wrong), else the current contract's, which is what
    /// a plugin author should build for.
    pub(super) fn new(instance_pre: InstancePre<Sandbox>) -> wasmtime::Result<Self> {
        match v0_2::StorePre::new(instance_pre.clone()) {
            Ok(pre) => Ok(ContractPre::V0_2(pre)),
            Err(current) => match v0_1::StorePre::new(instance_pre) {
                Ok(pre) => Ok(ContractPre::V0_1(pre)),
                Err(first) if !format!("{first:#}").contains("`apply`") => Err(first),
                Err(_) => Err(current),
            },
        }
    }

    pub(super) fn instance_pre(&self) -> &InstancePre<Sandbox> {
        match self {
            ContractPre::V0_1(pre) => pre.instance_pre(),
            ContractPre::V0_2(pre) => pre.instance_pre(),
        }
    }

    pub(super) fn contract(&self) -> Contract {
        match self {
            ContractPre::V0_1(_) => Contract::V0_1,
            ContractPre::V0_2(_) => Contract::V0_2,
        }
    }
}

/// The store exports of one instance.
pub(super) enum Exports {
    V0_1(v0_1::Store),
    V0_2(v0_2::Store),
}

/// A call's own answer: `Err` is the store's deterministic "no".
type Answer = Result<Vec<u8>, String>;

impl Exports {
    pub(super) fn new(
        pre: &ContractPre,
        store: &mut Store<Sandbox>,
        instance: &Instance,
    ) -> wasmtime::Result<Self> {
        Ok(match pre {
            ContractPre::V0_1(_) => Exports::V0_1(v0_1::Store::new(store, instance)?),
            ContractPre::V0_2(_) => Exports::V0_2(v0_2::Store::new(store, instance)?),
        })
    }

    /// `apply`. A 0.1.0 plugin does not see `ctx.position` (the node gives it none but 0).
    pub(super) fn call_apply(
        &self,
        store: &mut Store<Sandbox>,
        ctx: ApplyContext,
        entry: &[u8],
    ) -> wasmtime::Result<Answer> {
        match self {
            Exports::V0_1(exports) => {
                let ctx = v0_1::ApplyContext {
                    index: ctx.index,
                    term: ctx.term,
                    timestamp_ms: ctx.timestamp_ms,
                };
                exports.call_apply(store, ctx, entry)
            }
            Exports::V0_2(exports) => {
                let ctx = v0_2::ApplyContext {
                    index: ctx.index,
                    position: ctx.position,
                    term: ctx.term,
                    timestamp_ms: ctx.timestamp_ms,
                };
                exports.call_apply(store, ctx, entry)
            }
        }
    }

    pub(super) fn call_query(
        &self,
        store: &mut Store<Sandbox>,
        request: &[u8],
    ) -> wasmtime::Result<Answer> {
        match self {
            Exports::V0_1(exports) => exports.call_query(store, request),
            Exports::V0_2(exports) => exports.call_query(store, request),
        }
    }

    pub(super) fn call_snapshot(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<Vec<u8>> {
        match self {
            Exports::V0_1(exports) => exports.call_snapshot(store),
            Exports::V0_2(exports) => exports.call_snapshot(store),
        }
    }

    pub(super) fn call_restore(
        &self,
        store: &mut Store<Sandbox>,
        snapshot: &[u8],
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Exports::V0_1(exports) => exports.call_restore(store, snapshot),
            Exports::V0_2(exports) => exports.call_restore(store, snapshot),
        }
    }
}
