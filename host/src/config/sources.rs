//! Where each setting comes from: a flag, then a `RITERAFT_HOST_*` environment variable, then the
//! `--config` file, then the built-in default, and the `--print-config` report of the outcome.
//!
//! Nothing here names a setting: the environment variable and the file key of every argument of
//! [`NodeConfig`] are derived from its clap definition, so a flag added there gets both (and a
//! line in `--print-config`) for free. The file's values are handed to clap as if they were
//! flags written before the real ones (except those the command line or the environment gives),
//! so clap checks them exactly as it checks flags: their parsers, `requires`, conflicts.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory as _, FromArgMatches as _};

use super::NodeConfig;
use super::file::FileSettings;

/// The prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "RITERAFT_HOST_";

/// The id of `--config FILE` (not a setting: it says where the settings are).
const CONFIG_ID: &str = "config";
/// The id of `--print-config`.
const PRINT_CONFIG_ID: &str = "print_config";

/// What `riteraft-host` was asked to do.
#[derive(Debug)]
pub enum Invocation {
    /// Run a node so configured.
    Run(Box<NodeConfig>),
    /// `--print-config`: print every setting and where it came from, then exit.
    PrintConfig(Vec<Setting>),
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap's own: a bad flag or value, a missing --plugin; also --help and --version, which
    /// are "errors" that print and exit 0 (`clap::Error::exit`). `file` names the --config
    /// file whose settings were parsed along with the flags.
    #[error("{error}")]
    Clap {
        error: clap::Error,
        file: Option<PathBuf>,
    },
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid TOML: {source}", path.display())]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error(
        "{}: unknown key `{key}`{}",
        path.display(),
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestion: Option<String>,
    },
    #[error("{}: `{key}` must be {expected}, not a {found}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: String,
        found: &'static str,
    },
    #[error("{}: `{key}` = {value:?} is not a valid {expected}: {reason}", path.display())]
    InvalidValue {
        path: PathBuf,
        key: String,
        value: String,
        /// The flag's value name (`N`, `ADDR`).
        expected: String,
        reason: String,
    },
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(String),
    Env(String),
    File(PathBuf),
    Default,
    /// No value and no default (e.g. `--join` on a first node).
    Unset,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(long) => write!(f, "flag --{long}"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Default => f.write_str("default"),
            Source::Unset => f.write_str("unset"),
        }
    }
}

/// One setting's effective value, for `--print-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Its file key, which is also its flag's name (`data-dir`).
    pub key: String,
    /// Its values as the command line would spell them; empty when unset.
    pub values: Vec<String>,
    /// Whether it is an on/off flag (`read-lease`), shown as a TOML boolean.
    pub is_flag: bool,
    /// Whether a node cannot start without it.
    pub required: bool,
    pub source: Source,
}

/// The arguments of `command` that are settings: every argument of [`NodeConfig`] (help,
/// version, --config and --print-config are not).
pub(super) fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| {
        arg.get_long().is_some()
            && ![CONFIG_ID, PRINT_CONFIG_ID].contains(&arg.get_id().as_str())
            && !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
    })
}

/// Whether `arg` is an on/off flag (takes no value).
pub(super) fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// Whether `arg` may be given several values (a list in the file).
pub(super) fn is_multiple(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// The environment variable of the flag `--long`: `data-dir` → `RITERAFT_HOST_DATA_DIR`.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.replace('-', "_").to_uppercase())
}

/// `riteraft-host`'s command: [`NodeConfig`]'s flags, each with its environment variable, plus
/// --config and --print-config.
pub fn command() -> Command {
    let mut command = NodeConfig::command()
        // The file's settings come before the real flags; a flag given again replaces them.
        .args_override_self(true)
        .arg(
            Arg::new(CONFIG_ID)
                .long("config")
                .value_name("FILE")
                .env(env_name("config"))
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "Read settings from this TOML file (keys are the flags' names, e.g. \
                     `data-dir = \"n1\"`); flags and RITERAFT_HOST_* variables override it",
                ),
        )
        .arg(
            Arg::new(PRINT_CONFIG_ID)
                .long("print-config")
                .action(ArgAction::SetTrue)
                .help(
                    "Print every setting's effective value and where it came from (flag, \
                     env, file, default), then exit without starting a node",
                ),
        );
    let longs: Vec<(String, String)> = settings(&command)
        .filter(|arg| arg.get_env().is_none())
        .map(|arg| {
            let long = arg.get_long().unwrap_or_default();
            (arg.get_id().to_string(), long.to_string())
        })
        .collect();
    for (id, long) in longs {
        command = command.mut_arg(id, |arg| arg.env(env_name(&long)));
    }
    command
}

/// Parses `riteraft-host`'s arguments (the first being the program's name), the environment and
/// the --config file into what to do.
pub fn load<I, T>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = command();
    let given = given_on_command_line(&command, &args);
    let file = match &given.config {
        Some(path) => FileSettings::read(path, &command)?,
        None => FileSettings::default(),
    };
    let clap_error = |error| ConfigError::Clap {
        error,
        file: given.config.clone(),
    };

    // The file's settings as flags, for those neither the command line nor the environment
    // gives. A false flag needs nothing: off is what a missing flag means.
    let mut from_file = BTreeSet::new();
    let mut file_args = Vec::new();
    for arg in settings(&command) {
        let id = arg.get_id().as_str();
        let Some(values) = file.values.get(id) else {
            continue;
        };
        let env_set = arg
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some());
        if given.flags.contains(id) || env_set {
            continue;
        }
        from_file.insert(id.to_string());
        let long = arg.get_long().unwrap_or_default();
        if is_flag(arg) {
            if values == &["true"] {
                file_args.push(OsString::from(format!("--{long}")));
            }
        } else {
            file_args.extend(
                values
                    .iter()
                    .map(|value| format!("--{long}={value}").into()),
            );
        }
    }
    let mut argv = args.clone();
    let at = argv.len().min(1);
    argv.splice(at..at, file_args);

    let print = given.print_config;
    let required: BTreeSet<String> = settings(&command)
        .filter(|arg| arg.is_required_set())
        .map(|arg| arg.get_id().to_string())
        .collect();
    // --print-config shows a missing --plugin as unset rather than refusing to show anything.
    let command = if print {
        command.mut_args(|arg| arg.required(false))
    } else {
        command
    };
    let matches = command
        .clone()
        .try_get_matches_from(argv)
        .map_err(clap_error)?;
    if print {
        return Ok(Invocation::PrintConfig(report(
            &command, &matches, &file, &from_file, &required,
        )));
    }
    let config = NodeConfig::from_arg_matches(&matches).map_err(clap_error)?;
    Ok(Invocation::Run(Box::new(config)))
}

/// What the command line itself says, before the file is read.
#[derive(Debug, Default)]
struct GivenOnCommandLine {
    config: Option<PathBuf>,
    print_config: bool,
    /// The ids of the settings given as flags.
    flags: BTreeSet<String>,
}

/// A first, lenient pass over the arguments (nothing required, errors ignored): the full parse
/// needs the file, and the file's name is among the arguments. Errors are the second pass's.
fn given_on_command_line(command: &Command, args: &[OsString]) -> GivenOnCommandLine {
    let lenient = command
        .clone()
        .mut_args(|arg| arg.required(false))
        .ignore_errors(true)
        .disable_help_flag(true)
        .disable_version_flag(true);
    let Ok(matches) = lenient.try_get_matches_from(args) else {
        return GivenOnCommandLine::default();
    };
    GivenOnCommandLine {
        // try_: after an ignored error clap may not have filled in the defaults.
        config: matches
            .try_get_one::<PathBuf>(CONFIG_ID)
            .ok()
            .flatten()
            .cloned(),
        print_config: matches
            .try_get_one::<bool>(PRINT_CONFIG_ID)
            .ok()
            .flatten()
            .copied()
            .unwrap_or(false),
        flags: settings(command)
            .map(|arg| arg.get_id().as_str())
            .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
            .map(str::to_string)
            .collect(),
    }
}

/// Every setting's value and source after the full parse.
fn report(
    command: &Command,
    matches: &ArgMatches,
    file: &FileSettings,
    from_file: &BTreeSet<String>,
    required: &BTreeSet<String>,
) -> Vec<Setting> {
    settings(command)
        .map(|arg| {
            let id = arg.get_id().as_str();
            let long = arg.get_long().unwrap_or_default().to_string();
            let values: Vec<String> = matches
                .get_raw(id)
                .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let env = || arg.get_env().map(|n| n.to_string_lossy().into_owned());
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) if from_file.contains(id) => {
                    Source::File(file.path.clone())
                }
                Some(ValueSource::CommandLine) => Source::Flag(long.clone()),
                Some(ValueSource::EnvVariable) => Source::Env(env().unwrap_or_default()),
                // `read-lease = false` in the file: the same value as the default, but said.
                Some(ValueSource::DefaultValue) if from_file.contains(id) => {
                    Source::File(file.path.clone())
                }
                Some(ValueSource::DefaultValue) => Source::Default,
                _ => Source::Unset,
            };
            Setting {
                key: long,
                values,
                is_flag: is_flag(arg),
                required: required.contains(id),
                source,
            }
        })
        .collect()
}

/// The `--print-config` text: one line per setting, as TOML that a --config file can start
/// from, with its source as a comment; unset settings are commented out.
pub fn render(settings: &[Setting]) -> String {
    let lines: Vec<(String, String)> = settings
        .iter()
        .map(|setting| {
            let value = if setting.values.is_empty() {
                format!("# {} =", setting.key)
            } else {
                format!("{} = {}", setting.key, toml_value(setting))
            };
            let mut source = setting.source.to_string();
            if setting.values.is_empty() && setting.required {
                source.push_str(" (required to start a node)");
            }
            (value, source)
        })
        .collect();
    let width = lines
        .iter()
        .map(|(value, _)| value.len())
        .max()
        .unwrap_or(0);
    let header = format!(
        "# riteraft-host {}: each setting's effective value and where it came from\n",
        env!("RITERAFT_BUILD_VERSION")
    );
    let body = lines
        .iter()
        .map(|(value, source)| format!("{value:width$}  # {source}\n"));
    std::iter::once(header).chain(body).collect()
}

/// A setting's values as TOML: a boolean for a flag, a number when the text is exactly one
/// (so it reads back as the same text), a string otherwise; a list for several.
fn toml_value(setting: &Setting) -> String {
    let one = |raw: &String| {
        let bare = setting.is_flag || raw.parse::<i64>().is_ok_and(|n| n.to_string() == *raw);
        if bare {
            raw.clone()
        } else {
            toml::Value::String(raw.clone()).to_string()
        }
    };
    match setting.values.as_slice() {
        [single] => one(single),
        many => format!("[{}]", many.iter().map(one).collect::<Vec<_>>().join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value the setting's own parser takes, found without naming the setting (so that this
    /// test covers flags added later): its default, or the first of a few typical values.
    fn valid_value(arg: &Arg) -> toml::Value {
        if is_flag(arg) {
            return toml::Value::Boolean(true);
        }
        let defaults = arg.get_default_values().iter();
        let candidates = defaults
            .map(|v| v.to_string_lossy().into_owned())
            .chain(["127.0.0.1:7001", "1", "some/path"].map(String::from));
        for candidate in candidates {
            let file = toml_file(&format!(
                "{} = {}",
                arg.get_long().unwrap(),
                toml::Value::String(candidate.clone())
            ));
            if FileSettings::read(file.path(), &command()).is_ok() {
                return toml::Value::String(candidate);
            }
        }
        panic!("no typical value fits --{}", arg.get_long().unwrap())
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn print_config(args: &[&str]) -> Vec<Setting> {
        let args = std::iter::once("riteraft-host").chain(args.iter().copied());
        match load(args.chain(["--print-config"])) {
            Ok(Invocation::PrintConfig(settings)) => settings,
            other => panic!("{other:?}"),
        }
    }

    fn run_config(args: &[&str]) -> Result<NodeConfig, ConfigError> {
        match load(std::iter::once("riteraft-host").chain(args.iter().copied()))? {
            Invocation::Run(config) => Ok(*config),
            other => panic!("{other:?}"),
        }
    }

    /// The mechanism, not a list: fails if a flag of NodeConfig cannot be set from the
    /// environment or the file, or is missing from --print-config.
    #[test]
    fn every_setting_has_an_env_variable_a_file_key_and_a_report_line() {
        let command = command();
        let all: Vec<&Arg> = settings(&command).collect();
        assert_eq!(
            all.len(),
            NodeConfig::command().get_arguments().count(),
            "every argument of NodeConfig is a setting"
        );
        let mut file_text = String::new();
        for arg in &all {
            let long = arg
                .get_long()
                .expect("every setting has a long name (its file key)");
            assert_eq!(
                arg.get_env()
                    .map(|name| name.to_string_lossy().into_owned()),
                Some(env_name(long)),
                "--{long} has its environment variable"
            );
            file_text.push_str(&format!("{long} = {}\n", valid_value(arg)));
        }
        let file = toml_file(&file_text);
        let path = file.path().to_str().unwrap();
        let settings = print_config(&["--config", path]);
        assert_eq!(settings.len(), all.len());
        for setting in settings {
            assert_eq!(
                setting.source,
                Source::File(file.path().to_path_buf()),
                "{setting:?} from {file_text}"
            );
        }
    }

    #[test]
    fn file_values_reach_the_node_config_and_flags_beat_them() {
        let file = toml_file(
            "plugin = \"store.wasm\"\ndata-dir = \"/var/lib/riteraft\"\n\
             snapshot-entries = 5000\nread-lease = true\nlog-format = \"json\"\n",
        );
        let path = file.path().to_str().unwrap();
        let config = run_config(&["--config", path]).unwrap();
        assert_eq!(config.plugin, PathBuf::from("store.wasm"));
        assert_eq!(config.data_dir(), PathBuf::from("/var/lib/riteraft"));
        assert_eq!(config.snapshot_entries, 5000);
        assert!(config.read_lease);
        assert_eq!(config.log_format, super::super::LogFormat::Json);

        let config = run_config(&["--snapshot-entries", "7", "--config", path]).unwrap();
        assert_eq!(config.snapshot_entries, 7);
        let settings = print_config(&["--config", path, "--snapshot-entries=7"]);
        let entries = settings
            .iter()
            .find(|s| s.key == "snapshot-entries")
            .unwrap();
        assert_eq!(entries.values, ["7"]);
        assert_eq!(entries.source, Source::Flag("snapshot-entries".into()));
    }

    #[test]
    fn file_mistakes_name_the_key() {
        let cases = [
            ("snapshot-entires = 5", "unknown key `snapshot-entires`"),
            ("data_dir = \"x\"", "did you mean `data-dir`?"),
            (
                "read-lease = \"yes\"",
                "`read-lease` must be true or false, not a string",
            ),
            ("snapshot-entries = true", "`snapshot-entries` must be a N"),
            (
                "snapshot-entries = -1",
                "`snapshot-entries` = \"-1\" is not a valid N",
            ),
            ("log-format = \"xml\"", "expected one of text, json"),
            ("listen = [\"a\", \"b\"]", "`listen` must be a ADDR"),
            ("listen = ", "is not valid TOML"),
        ];
        for (text, expected) in cases {
            let file = toml_file(text);
            let error = run_config(&["--config", file.path().to_str().unwrap()]).unwrap_err();
            assert!(error.to_string().contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn print_config_is_a_config_file_that_reads_back_the_same() {
        let settings = print_config(&[
            "--plugin",
            "a b.wasm",
            "--read-lease",
            "--join=10.0.0.1:7001",
        ]);
        let plugin = settings.iter().find(|s| s.key == "plugin").unwrap();
        assert_eq!(plugin.source, Source::Flag("plugin".into()));
        let rendered = render(&settings);
        let file = toml_file(&rendered);
        let again = print_config(&["--config", file.path().to_str().unwrap()]);
        for (before, after) in settings.iter().zip(&again) {
            assert_eq!(before.values, after.values, "{rendered}");
        }
        assert!(rendered.contains("# tls-cert ="), "{rendered}");
    }

    #[test]
    fn a_bad_flag_is_clap_s_error_not_a_panic() {
        for args in [&["--listen", "1.2.3.4"][..], &["--bogus"], &["--config"]] {
            let error = run_config(args).unwrap_err();
            assert!(
                matches!(error, ConfigError::Clap { .. }),
                "{args:?}: {error}"
            );
        }
    }

    #[test]
    fn print_config_without_a_plugin_shows_it_unset_and_required() {
        let settings = print_config(&[]);
        let plugin = settings.iter().find(|s| s.key == "plugin").unwrap();
        assert_eq!(plugin.source, Source::Unset);
        assert!(plugin.required);
        assert!(render(&settings).contains("unset (required to start a node)"));
    }
}
