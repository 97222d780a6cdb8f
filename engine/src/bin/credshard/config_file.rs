//! `serve --config FILE` and `config check FILE`: a TOML file of serve options, with
//! precedence flag > environment (`CREDSHARD_*`) > file > default.
//!
//! The file is turned into more command-line arguments: each setting the command line and the
//! environment left at its default becomes `--name value` after them, and clap parses the whole
//! again, so a file is checked exactly as flags are (types, ranges, conflicts) and no option is
//! described twice.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory};

use crate::cli::Cli;

/// `argv` (a `serve` command line) with the settings of `file` it does not set itself.
///
/// # Errors
/// An unreadable or malformed file, an unknown setting, or a value of a type no flag takes.
pub fn with_file(argv: &[OsString], file: &Path) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
    let matches = Cli::command().try_get_matches_from(argv)?;
    let serve_matches = matches.subcommand_matches("serve").context("--config goes with serve")?;
    let command = Cli::command();
    let serve = command.find_subcommand("serve").expect("serve is a subcommand");
    let mut arguments = argv.to_vec();
    for (name, value) in &table {
        let long = name.replace('_', "-");
        let Some(argument) =
            serve.get_arguments().find(|argument| argument.get_long() == Some(long.as_str()))
        else {
            bail!("{}: unknown setting {name:?} (see `credshard serve --help`)", file.display());
        };
        if long == "config" {
            bail!("{}: a config file cannot name another", file.display());
        }
        if matches!(
            serve_matches.value_source(argument.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue; // the flag or the environment wins
        }
        let flag = format!("--{long}");
        match (value, argument.get_action()) {
            (toml::Value::Boolean(set), ArgAction::SetTrue) => {
                if *set {
                    arguments.push(flag.into());
                }
            }
            (toml::Value::String(text), _) => arguments.extend([flag.into(), text.into()]),
            (toml::Value::Integer(number), _) => arguments.extend([flag.into(), number.to_string().into()]),
            (other, _) => bail!("{}: {name} = {other} is not a value --{long} takes", file.display()),
        }
    }
    Ok(arguments)
}

/// `config check FILE`: the effective serve configuration, one `name = value` line per
/// option (TOML, loadable again), each with where it came from; the store URL's password is
/// redacted.
///
/// # Errors
/// As [`with_file`], or a configuration `serve` would refuse.
pub fn check(file: &Path) -> anyhow::Result<String> {
    let argv: Vec<OsString> =
        ["credshard", "serve", "--config"].map(OsString::from).into_iter().chain([file.into()]).collect();
    let merged = with_file(&argv, file)?;
    let matches = Cli::command().try_get_matches_from(&merged)?;
    let serve_matches = matches.subcommand_matches("serve").expect("a serve command line");
    let config = <credshard_engine::ServerConfig as clap::FromArgMatches>::from_arg_matches(serve_matches)?;
    config.validate()?;
    let file_values: toml::Table = toml::from_str(&std::fs::read_to_string(file)?)?;
    let from_file = |long: &str| file_values.keys().any(|name| name.replace('_', "-") == long);
    let command = Cli::command();
    let serve = command.find_subcommand("serve").expect("serve is a subcommand");
    let mut out = format!(
        "# credshard serve, as configured by {} (flags and CREDSHARD_* win over it)\n",
        file.display()
    );
    for argument in serve.get_arguments() {
        let Some(long) = argument.get_long() else { continue };
        if long == "config" || long == "help" {
            continue;
        }
        let id = argument.get_id().as_str();
        let values: Vec<String> = serve_matches
            .get_raw(id)
            .map(|values| values.map(|value| value.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match serve_matches.value_source(id) {
            Some(ValueSource::CommandLine) if from_file(long) => "file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let value = match values.first() {
            None if argument.get_action().takes_values() => {
                out.push_str(&format!("# {long} (unset)\n"));
                continue;
            }
            None => "false".to_owned(),
            Some(value) if !argument.get_action().takes_values() => value.clone(),
            Some(value) => toml_value(&redact(long, value)),
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    Ok(out)
}

/// A value as TOML: numbers and booleans bare, everything else a string.
fn toml_value(text: &str) -> String {
    if text.parse::<i64>().is_ok() || text == "true" || text == "false" {
        text.to_owned()
    } else {
        toml::Value::String(text.to_owned()).to_string()
    }
}

/// The store URL without its password (`postgres://user:***@host/db`, `password=***`).
fn redact(long: &str, value: &str) -> String {
    if long != "store" {
        return value.to_owned();
    }
    let mut redacted: Vec<String> = value
        .split_whitespace()
        .map(|pair| if pair.starts_with("password=") { "password=***".to_owned() } else { pair.to_owned() })
        .collect();
    if let [url] = redacted.as_mut_slice() {
        if let Some((scheme, rest)) = url.split_once("://") {
            if let Some((credentials, host)) = rest.split_once('@') {
                if let Some((user, _)) = credentials.split_once(':') {
                    *url = format!("{scheme}://{user}:***@{host}");
                }
            }
        }
    }
    redacted.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let path = dir.path().join("credshard.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn serve_config(argv: &[&str]) -> credshard_engine::ServerConfig {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let matches = Cli::command().try_get_matches_from(&argv).unwrap();
        <credshard_engine::ServerConfig as clap::FromArgMatches>::from_arg_matches(
            matches.subcommand_matches("serve").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "listen = \"127.0.0.1:9000\"\nmax_versions = 3\nfsync = \"never\"\ncreate-keyring = true\n",
        );
        let argv: Vec<OsString> = ["credshard", "serve", "--max-versions", "7"].map(OsString::from).to_vec();
        let merged = with_file(&argv, &file).unwrap();
        let merged: Vec<&str> = merged.iter().map(|argument| argument.to_str().unwrap()).collect();
        let config = serve_config(&merged);
        assert_eq!(config.max_versions, 7, "the flag wins");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000", "the file beats the default");
        assert_eq!(config.fsync, credshard_engine::config::FsyncMode::Never);
        assert!(config.create_keyring);
        assert_eq!(
            config.grace_period_seconds,
            credshard_engine::ServerConfig::default().grace_period_seconds
        );
    }

    #[test]
    fn unknown_settings_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let argv: Vec<OsString> = ["credshard", "serve"].map(OsString::from).to_vec();
        let unknown = with_file(&argv, &write(&dir, "lisen = \"127.0.0.1:1\"\n")).unwrap_err();
        assert!(unknown.to_string().contains("unknown setting \"lisen\""), "{unknown}");
        let typed = with_file(&argv, &write(&dir, "shards = [1, 2]\n")).unwrap_err();
        assert!(typed.to_string().contains("not a value --shards takes"), "{typed}");
        let merged = with_file(&argv, &write(&dir, "shards = \"many\"\n")).unwrap();
        assert!(
            Cli::command().try_get_matches_from(&merged).is_err(),
            "clap checks the file's values as flags"
        );
    }

    #[test]
    fn check_prints_the_effective_configuration_without_the_store_password() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            write(&dir, "store = \"postgres://app:hunter2@db.internal/secrets\"\nstore-connections = 4\n");
        let shown = check(&file).unwrap();
        assert!(shown.contains("store = \"postgres://app:***@db.internal/secrets\"  # file"), "{shown}");
        assert!(shown.contains("store-connections = 4  # file"), "{shown}");
        assert!(shown.contains("max-versions = 10  # default"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let reloaded: toml::Table = toml::from_str(&shown).expect("the output is TOML again");
        assert_eq!(reloaded["store-connections"].as_integer(), Some(4));
        assert_eq!(redact("store", "host=db user=app password=hunter2"), "host=db user=app password=***");
    }
}
