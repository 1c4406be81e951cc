//! The `riteraft-host` binary refuses bad plugins with a message that names the problem.

use std::process::Command;

use riteraft_test_support::plugin;

fn host_with_plugin(path: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_riteraft-host"))
        .arg("--plugin")
        .arg(path)
        .env("RUST_LOG", "error")
        .output()
        .expect("riteraft-host runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_plugins_exit_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("store.wasm");
    std::fs::write(&text_file, "hello").unwrap();
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();

    let cases = [
        (dir.path().join("absent.wasm"), "cannot read"),
        (text_file, "not a WebAssembly file"),
        (core_module, "core WebAssembly module, not a component"),
        (plugin("missing-export"), "does not export `query`"),
        (
            plugin("wrong-signature"),
            "export `query` has the wrong signature",
        ),
    ];
    for (path, expected) in cases {
        let (ok, stderr) = host_with_plugin(&path);
        assert!(!ok, "{} was accepted", path.display());
        assert!(
            stderr.contains(expected),
            "for {}: {stderr}",
            path.display()
        );
    }
}

#[test]
fn readme_shows_the_real_hashstore_example() {
    let root = riteraft_test_support::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("plugins/hashstore/src/lib.rs")).unwrap();
    assert!(
        readme.contains(&example),
        "README.md must include plugins/hashstore/src/lib.rs verbatim: update the README"
    );
}
