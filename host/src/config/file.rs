//! The `--config` file: a TOML table whose keys are the long names of the node's flags,
//! checked against the flags' own definitions (unknown keys, wrong types, invalid values) before
//! anything else happens, so a typo stops the node with the key's name instead of being ignored.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue};
use clap::{Arg, ArgAction, Command};

use super::sources::{ConfigError, is_flag, is_multiple, settings};

/// The settings a file gives, already checked: each one's raw values by the flag's id.
#[derive(Debug, Default)]
pub(super) struct FileSettings {
    pub path: PathBuf,
    /// A flag's (`--read-lease`) value is `["true"]` or `["false"]`.
    pub values: BTreeMap<String, Vec<String>>,
}

impl FileSettings {
    /// Reads and checks `path` against the settings of `command`.
    pub fn read(path: &Path, command: &Command) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let table: toml::Table = text.parse().map_err(|source| ConfigError::Syntax {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let mut values = BTreeMap::new();
        for (key, value) in table {
            let Some(arg) = settings(command).find(|arg| arg.get_long() == Some(key.as_str()))
            else {
                return Err(ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    suggestion: closest_key(&key, command),
                    key,
                });
            };
            let raw = raw_values(arg, &value).map_err(|expected| ConfigError::WrongType {
                path: path.to_path_buf(),
                key: key.clone(),
                expected,
                found: value.type_str(),
            })?;
            if !is_flag(arg) {
                for raw in &raw {
                    check_value(arg, raw).map_err(|reason| ConfigError::InvalidValue {
                        path: path.to_path_buf(),
                        key: key.clone(),
                        value: raw.clone(),
                        expected: value_name(arg),
                        reason,
                    })?;
                }
            }
            values.insert(arg.get_id().to_string(), raw);
        }
        Ok(Self {
            path: path.to_path_buf(),
            values,
        })
    }
}

/// The values `value` stands for, as they would be written on the command line, or what the
/// flag expects instead. Numbers are taken for what they print as: the flag's own parser (see
/// [`check_value`]) says whether they fit.
fn raw_values(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    if is_flag(arg) {
        return match value {
            toml::Value::Boolean(on) => Ok(vec![on.to_string()]),
            _ => Err("true or false".to_string()),
        };
    }
    let expected = || {
        let name = value_name(arg);
        if is_multiple(arg) {
            format!("a {name} or a list of them")
        } else {
            format!("a {name} (a string or a number)")
        }
    };
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        _ => None,
    };
    match value {
        toml::Value::Array(items) if is_multiple(arg) => items
            .iter()
            .map(|item| scalar(item).ok_or_else(expected))
            .collect(),
        _ => scalar(value).map(|raw| vec![raw]).ok_or_else(expected),
    }
}

/// What the flag's help calls its value: `N`, `ADDR`, `PATH`.
fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or("VALUE".to_string(), ToString::to_string)
}

/// Runs `raw` through the flag's value parser, as clap will: Err is why it does not fit. (clap
/// runs a parser only within a parse, so this parses a command of that one argument.)
fn check_value(arg: &Arg, raw: &str) -> Result<(), String> {
    let alone = Arg::new(arg.get_id().clone())
        .long(arg.get_long().unwrap_or("value").to_string())
        .action(ArgAction::Set)
        .value_parser(arg.get_value_parser().clone());
    let error = match Command::new("riteraft-host")
        .no_binary_name(true)
        .arg(alone)
        .try_get_matches_from([format!("--{}={raw}", arg.get_long().unwrap_or("value"))])
    {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    if let Some(source) = error.source() {
        return Err(source.to_string());
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return Err(format!("expected one of {}", valid.join(", ")));
    }
    Err(error.kind().to_string())
}

/// The setting whose name is nearest `key`, if any is near enough to be a likely typo.
fn closest_key(key: &str, command: &Command) -> Option<String> {
    settings(command)
        .filter_map(Arg::get_long)
        // Also catches `data_dir` for `data-dir`.
        .map(|long| (strsim::jaro_winkler(&key.replace('_', "-"), long), long))
        .filter(|(similarity, _)| *similarity > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, long)| long.to_string())
}
