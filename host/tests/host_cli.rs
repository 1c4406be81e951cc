//! The `riteraft-host` binary: it refuses bad plugins with a message that names the problem,
//! takes its settings from flags, `RITERAFT_HOST_*` variables and a `--config` file (in that order),
//! reports them with `--print-config`, logs as text or JSON, and names its revision.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Longer than any of these runs takes (each exits before starting a node, or at once).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs `riteraft-host args` with `env` (and none of the caller's `RITERAFT_*` variables),
/// killing it past [`RUN_LIMIT`].
fn host(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_riteraft-host"));
    command.args(args).env("RUST_LOG", "info");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RITERAFT_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("riteraft-host runs");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > RUN_LIMIT {
            child.kill().unwrap();
            panic!("riteraft-host {args:?} still running after {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config_file(dir: &Path, toml: &str) -> String {
    let path = dir.join("node.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_string()
}

/// The `--print-config` line of `key`: its value and its source.
fn printed(output: &Output, key: &str) -> (String, String) {
    assert!(output.status.success(), "{output:?}");
    let stdout = text(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in\n{stdout}"));
    let (value, source) = line.split_once("  # ").unwrap();
    let value = value.trim_start_matches(&format!("{key} = ")).trim();
    (value.to_string(), source.trim().to_string())
}

#[test]
fn settings_come_from_the_flag_then_the_environment_then_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        "data-dir = \"/var/lib/riteraft\"\nsnapshot-entries = 5000\nread-lease = true\n",
    );
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--config", file.as_str(), "--print-config"];
        all.extend_from_slice(args);
        host(&all, env)
    };

    let from_file = run(&[], &[]);
    let file_source = format!("file {file}");
    assert_eq!(
        printed(&from_file, "snapshot-entries"),
        ("5000".into(), file_source.clone())
    );
    assert_eq!(
        printed(&from_file, "read-lease"),
        ("true".into(), file_source.clone())
    );
    assert_eq!(
        printed(&from_file, "data-dir"),
        ("\"/var/lib/riteraft\"".into(), file_source.clone())
    );
    assert_eq!(
        printed(&from_file, "listen"),
        ("\"127.0.0.1:7001\"".into(), "default".into())
    );

    let env = [
        ("RITERAFT_HOST_SNAPSHOT_ENTRIES", "6000"),
        ("RITERAFT_HOST_READ_LEASE", "false"),
    ];
    let from_env = run(&[], &env);
    assert_eq!(
        printed(&from_env, "snapshot-entries"),
        ("6000".into(), "env RITERAFT_HOST_SNAPSHOT_ENTRIES".into())
    );
    assert_eq!(
        printed(&from_env, "read-lease"),
        ("false".into(), "env RITERAFT_HOST_READ_LEASE".into())
    );
    assert_eq!(printed(&from_env, "data-dir").1, file_source);

    let from_flag = run(&["--snapshot-entries", "7000"], &env);
    assert_eq!(
        printed(&from_flag, "snapshot-entries"),
        ("7000".into(), "flag --snapshot-entries".into())
    );

    // The file is itself named by the environment as well as by --config.
    let file_from_env = host(&["--print-config"], &[("RITERAFT_HOST_CONFIG", &file)]);
    assert_eq!(printed(&file_from_env, "snapshot-entries").1, file_source);
}

#[test]
fn the_file_value_reaches_the_node() {
    // A node that fails on its plugin still says which one: the plugin path came from the file.
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("from-the-file.wasm");
    let file = config_file(
        dir.path(),
        &format!("plugin = {:?}\n", absent.to_str().unwrap()),
    );
    let output = host(&["--config", &file], &[]);
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot read") && stderr.contains("from-the-file.wasm"),
        "{stderr}"
    );
}

#[test]
fn config_file_mistakes_exit_at_once_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "snapshot-entires = 5000",
            "unknown key `snapshot-entires` (did you mean `snapshot-entries`?)",
        ),
        (
            "read-lease = \"yes\"",
            "`read-lease` must be true or false, not a string",
        ),
        (
            "snapshot-entries = \"many\"",
            "`snapshot-entries` = \"many\" is not a valid N",
        ),
        (
            "listen = \"localhost\"",
            "`listen` = \"localhost\" is not a valid ADDR",
        ),
    ];
    for (toml, expected) in cases {
        let file = config_file(dir.path(), toml);
        let started = Instant::now();
        let output = host(&["--config", &file, "--plugin", "unused.wasm"], &[]);
        assert_eq!(output.status.code(), Some(2), "{toml}: {output:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected), "{toml}: {stderr}");
        assert!(stderr.contains(&file), "{toml}: names the file: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{toml}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn print_config_shows_every_setting_and_a_missing_plugin_as_unset() {
    let output = host(
        &["--print-config"],
        &[("RITERAFT_HOST_LISTEN", "127.0.0.1:7100")],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(stdout.contains("# plugin ="), "{stdout}");
    assert!(
        stdout.contains("unset (required to start a node)"),
        "{stdout}"
    );
    assert_eq!(
        printed(&output, "listen"),
        (
            "\"127.0.0.1:7100\"".into(),
            "env RITERAFT_HOST_LISTEN".into()
        )
    );
    for key in [
        "snapshot-entries",
        "read-lease",
        "insecure",
        "log-format",
        "fuel-per-call",
    ] {
        assert_eq!(printed(&output, key).1, "default", "{key}");
    }
    // Nothing was started: no data dir appeared.
    assert!(!Path::new("riteraft-data-7100").exists());
}

#[test]
fn log_format_json_prints_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.wasm");
    let absent = absent.to_str().unwrap();
    for (args, env) in [
        (vec!["--plugin", absent, "--log-format", "json"], vec![]),
        (
            vec!["--plugin", absent],
            vec![("RITERAFT_HOST_LOG_FORMAT", "json")],
        ),
    ] {
        let output = host(&args, &env);
        assert!(!output.status.success(), "{output:?}");
        let stderr = text(&output.stderr);
        let logged: Vec<serde_json::Value> = stderr
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        let start = logged
            .iter()
            .find(|line| line["message"] == "riteraft-host starting")
            .unwrap_or_else(|| panic!("no start line in\n{stderr}"));
        assert_eq!(start["level"], "INFO", "{start}");
        assert!(
            start["version"].as_str().unwrap().contains("(rev "),
            "{start}"
        );
    }
    let output = host(&["--plugin", absent], &[]);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("riteraft-host starting") && !stderr.contains("{\""),
        "{stderr}"
    );
}

#[test]
fn version_names_the_source_revision() {
    let output = host(&["--version"], &[]);
    assert!(output.status.success(), "{output:?}");
    let stdout = text(&output.stdout);
    let expected = format!("riteraft-host {} (rev ", env!("CARGO_PKG_VERSION"));
    assert!(stdout.starts_with(&expected), "{stdout}");
    // Built from a git checkout (as here and in CI), the revision is its commit.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Some(head) = head.ok().filter(|head| head.status.success())
        && std::env::var_os("RITERAFT_REVISION").is_none()
    {
        let head = text(&head.stdout);
        assert!(
            stdout.contains(&format!("(rev {}", head.trim())),
            "{stdout} at {head}"
        );
    }
}
