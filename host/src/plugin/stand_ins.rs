//! Stand-ins for imports the sandbox does not provide. Toolchains' defaults import interfaces a
//! store never uses (componentize-js imports `wasi:http`); refusing those modules would make
//! every such store need special build flags. So each function of an unknown import is linked
//! to one that traps with a message naming it: the same failure on every replica, and only if
//! the store calls it.
//!
//! Not wasmtime's `Linker::define_unknown_imports_as_traps`: it matches names exactly, so it
//! also replaced WASI interfaces that the linker provides under a compatible version (a plugin
//! importing `wasi:cli/stderr@0.2.6` lost its real stderr).

use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, ResourceType};

/// The interfaces the sandbox provides (WASI 0.2, as wasmtime-wasi links it, with the
/// deterministic stand-ins of `sandbox.rs`), and the snapshot streams of `proto/store.wit`.
const PROVIDED: [&str; 6] = [
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];
const PROVIDED_FUNCTIONS: [&str; 2] = ["snapshot-read", "snapshot-write"];

/// Links a trapping stand-in for every import of `component` that the sandbox does not
/// provide.
pub(super) fn link_stand_ins<T: 'static>(
    linker: &mut Linker<T>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    let provided = provided_resources(engine, component);
    for (name, item) in component.component_type().imports(engine) {
        if PROVIDED.iter().any(|package| name.starts_with(package))
            || PROVIDED_FUNCTIONS.contains(&name)
        {
            continue;
        }
        match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                let mut inner = linker.instance(name)?;
                for (export, item) in instance.exports(engine) {
                    stand_in(
                        &mut inner,
                        &provided,
                        &format!("{name}#{export}"),
                        export,
                        item.ty,
                    )?;
                }
            }
            item => stand_in(&mut linker.root(), &provided, name, name, item)?,
        }
    }
    Ok(())
}

/// The resources of WASI's `wasi:io` that `component` imports, with the host types the
/// sandbox gives them: an unknown interface that uses them (`wasi:http/types` uses
/// `input-stream`) must link them as those very types.
fn provided_resources(engine: &Engine, component: &Component) -> Vec<(ResourceType, ResourceType)> {
    let host = |name: &str| match name {
        "input-stream" => Some(ResourceType::host::<wasmtime_wasi::p2::DynInputStream>()),
        "output-stream" => Some(ResourceType::host::<wasmtime_wasi::p2::DynOutputStream>()),
        "pollable" => Some(ResourceType::host::<wasmtime_wasi::p2::DynPollable>()),
        "error" => Some(ResourceType::host::<wasmtime_wasi::p2::IoError>()),
        _ => None,
    };
    let mut provided = Vec::new();
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if !name.starts_with("wasi:io/") {
            continue;
        }
        for (export, item) in instance.exports(engine) {
            if let (ComponentItem::Resource(ty), Some(host)) = (item.ty, host(export)) {
                provided.push((ty, host));
            }
        }
    }
    provided
}

/// A stand-in for the function (or resource type) `name`, `what` in full.
fn stand_in<T: 'static>(
    linker: &mut LinkerInstance<'_, T>,
    provided: &[(ResourceType, ResourceType)],
    what: &str,
    name: &str,
    item: ComponentItem,
) -> wasmtime::Result<()> {
    match item {
        ComponentItem::ComponentFunc(_) => {
            let message = format!(
                "the store called `{what}`, which the sandbox does not provide (see the README's \
                 table of WASI interfaces)"
            );
            linker.func_new(name, move |_, _, _, _| {
                Err(wasmtime::Error::msg(message.clone()))
            })
        }
        // A resource of the interface: its functions trap, so no value of it is ever made;
        // unless it is one of WASI's, used by the interface, which must keep its type.
        ComponentItem::Resource(ty) => {
            let host = (provided.iter())
                .find(|(imported, _)| *imported == ty)
                .map_or(ResourceType::host::<()>(), |(_, host)| *host);
            linker.resource(name, host, |_, _| Ok(()))
        }
        _ => Ok(()),
    }
}
