//! The command line: every subcommand and its options (clap derive). The server's options
//! are [`ServerConfig`]'s, defined beside their defaults in the engine.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use credshard_engine::ServerConfig;
#[derive(Parser)]
#[command(name = "credshard", version, about = "A thread-per-core encrypted credential store")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The environment variable the client subcommands read their access token from.
pub const TOKEN_VARIABLE: &str = "CREDSHARD_TOKEN";

/// Where the server is. The access token, if the server needs one, is read from the
/// CREDSHARD_TOKEN environment variable.
#[derive(clap::Args)]
pub struct Connect {
    /// Server address: HOST:PORT, or credshards://HOST:PORT for TLS.
    #[arg(long, env = "CREDSHARD_ADDR", default_value = "127.0.0.1:7373")]
    pub addr: String,
    /// CA certificate (PEM) that signed the server's certificate; for credshards://.
    #[arg(long, env = "CREDSHARD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host in --addr).
    #[arg(long, env = "CREDSHARD_TLS_NAME")]
    pub tls_name: Option<String>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a new random token and the [[token]] table to add to the tokens file. Only the
    /// table's sha256 is stored; the token is shown once.
    New {
        /// The token's id, as the audit log records it.
        #[arg(long)]
        id: String,
        /// Ops it may use: read, read-meta, write, rotate, delete, list, admin, or * (all).
        #[arg(long, value_delimiter = ',', required = true)]
        ops: Vec<String>,
        /// Owners whose credentials it may touch (default: any); repeatable.
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// Scope prefixes it may touch (default: any); repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServerConfig>),
    /// Write a new random master key file (mode 0600).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Access tokens for the tokens file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Read the audit log, filtered.
    Audit(credshard_engine::audit::cli::AuditArgs),
    /// Configuration files for `serve --config`.
    #[command(subcommand)]
    Config(ConfigCommand),
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file as `serve --config FILE` would read it (flags and CREDSHARD_*
    /// variables of this shell win over it), and print the effective configuration, every
    /// option with where its value came from; a store password is redacted.
    Check { file: PathBuf },
}

/// The subcommands that are a client of a running server.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Store a secret read from standard input (one trailing newline is dropped).
    Put {
        id: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        scope: String,
        /// generic, api-key, password, token or certificate.
        #[arg(long, default_value = "generic")]
        kind: String,
        /// Expire this many seconds from now.
        #[arg(long, conflicts_with = "expires_at_ms")]
        ttl: Option<u64>,
        /// Expire at this Unix time in milliseconds.
        #[arg(long)]
        expires_at_ms: Option<u64>,
        /// Compare-and-set: only write if the current version is V (0: must not exist).
        #[arg(long)]
        if_version: Option<u64>,
        /// A label KEY=VALUE; repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Keep standard input byte for byte (do not drop a trailing newline).
        #[arg(long)]
        raw: bool,
        /// Write the new version as pending (STAGE): readable with `get --stage pending`, not
        /// served as current until `promote`. The credential must exist.
        #[arg(long)]
        pending: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Print a secret (or, with --meta, its metadata).
    Get {
        id: String,
        #[arg(long)]
        meta: bool,
        /// A given version instead of the current one.
        #[arg(long, conflicts_with = "meta")]
        version: Option<u64>,
        /// The version in a stage of a staged rotation: current, pending or previous.
        #[arg(long, conflicts_with_all = ["meta", "version"])]
        stage: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Store a new secret (from standard input) as a new version; the replaced version stays
    /// readable for the grace period, then is retired.
    Rotate {
        id: String,
        /// Grace period of the replaced version, in seconds (default: the server's, 24 h).
        #[arg(long, conflicts_with = "pending")]
        grace: Option<u64>,
        /// Compare-and-set: only rotate if the current version is V.
        #[arg(long)]
        if_version: Option<u64>,
        /// Keep standard input byte for byte (do not drop a trailing newline).
        #[arg(long)]
        raw: bool,
        /// Stage the new secret as pending (keeping the current version's owner, scope, kind,
        /// labels and expiry) instead of making it current; `promote` makes it current and
        /// takes the grace period then.
        #[arg(long)]
        pending: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Make the pending version current; the version it replaces stays readable for the grace
    /// period (`get --stage previous`), then is retired.
    Promote {
        id: String,
        /// Grace period of the replaced version, in seconds (default: the server's, 24 h).
        #[arg(long)]
        grace: Option<u64>,
        /// Compare-and-set: only promote if the pending version is V.
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        connect: Connect,
    },
    /// List credentials by owner and/or scope (ids, versions, no secrets).
    List {
        #[arg(long, default_value = "")]
        owner: String,
        #[arg(long, default_value = "")]
        scope: String,
        /// Most items to print (all pages are fetched until then).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        connect: Connect,
    },
    /// Print several secrets in one request, one line per id: `ID SECRET` or `ID error: ...`.
    BatchGet {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Delete a credential: unreadable at once, recoverable with `undelete` for the server's
    /// recovery window (7 days by default), then purged with all its versions.
    Delete {
        id: String,
        /// Only delete if the current version is V.
        #[arg(long)]
        if_version: Option<u64>,
        /// Remove it and all its versions at once, unrecoverably.
        #[arg(long, conflicts_with = "recovery_window")]
        purge: bool,
        /// Keep it recoverable for S seconds instead of the server's window (1..=31536000).
        #[arg(long, value_name = "S")]
        recovery_window: Option<u64>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Restore a deleted credential within its recovery window, as it was.
    Undelete {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Print changes as they are committed, one line each (never a secret): `SHARD:SEQ CHANGE
    /// ID version V at_ms T owner O scope S`. With --position-file, resumes from the position
    /// saved there and saves it after every change, so a restarted watcher misses nothing.
    Watch {
        /// Only this credential.
        #[arg(long, conflicts_with_all = ["owner", "scope_prefix"])]
        id: Option<String>,
        /// Only credentials of this owner.
        #[arg(long, conflicts_with = "scope_prefix")]
        owner: Option<String>,
        /// Only credentials whose scope starts with this.
        #[arg(long)]
        scope_prefix: Option<String>,
        /// A file holding the position to resume from (written after every change).
        #[arg(long)]
        position_file: Option<PathBuf>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Print a credential's policy, or with --set replace it (options not given take their
    /// defaults): how many versions it keeps, whether every write must name the version it
    /// expects, when versions other than the current one retire, and custom metadata.
    Policy {
        id: String,
        /// Replace the policy with the options given.
        #[arg(long)]
        set: bool,
        /// Versions kept, current included (1..=1000; default: the server's --max-versions).
        #[arg(long, requires = "set")]
        max_versions: Option<u16>,
        /// Refuse writes (put, rotate, stage, promote, delete) without --if-version.
        #[arg(long, requires = "set")]
        cas_required: bool,
        /// Versions other than the current one retire this many seconds after they were written.
        #[arg(long, value_name = "S", requires = "set")]
        delete_version_after: Option<u64>,
        /// Custom metadata KEY=VALUE; repeatable.
        #[arg(long = "meta", value_name = "KEY=VALUE", requires = "set")]
        metadata: Vec<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Erase one version's secret for good, keeping its metadata (its state becomes destroyed).
    Destroy {
        id: String,
        /// The version to destroy.
        #[arg(long)]
        version: u64,
        #[command(flatten)]
        connect: Connect,
    },
    /// Rotate the data key (admin): new writes use a fresh key at once, and the server
    /// re-encrypts every record on the older keys in the background, then drops them.
    RotateKey {
        /// Wait until no record is left on an older key.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Rewrap every data key under a new master key (admin). The server goes on serving; its
    /// next start needs the new key (the old one is refused). Send it over TLS or from the
    /// server's host.
    Rekey {
        /// The new master key file (from `credshard keygen`).
        #[arg(long, required_unless_present = "new_passphrase_env", conflicts_with = "new_passphrase_env")]
        new_key_file: Option<PathBuf>,
        /// Name of an environment variable holding the new passphrase.
        #[arg(long)]
        new_passphrase_env: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Print the server's counters.
    Stats {
        #[command(flatten)]
        connect: Connect,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// docs/operations.md's table of serve options: (flag, environment variable, default).
    fn documented() -> Vec<(String, String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
        let text = std::fs::read_to_string(path).unwrap();
        let table = text.split("## Configuration").nth(1).unwrap().split("\n\n").nth(2).unwrap();
        table
            .lines()
            .skip(2)
            .map(|row| {
                let cells: Vec<String> = row
                    .split('|')
                    .skip(1)
                    .take(3)
                    .map(|cell| cell.trim().trim_matches('`').to_owned())
                    .collect();
                (cells[0].clone(), cells[1].clone(), cells[2].clone())
            })
            .collect()
    }

    #[test]
    fn the_documented_options_are_the_serve_options_with_their_names_and_defaults() {
        let documented = documented();
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        let mut expected = Vec::new();
        for argument in serve.get_arguments() {
            let Some(long) = argument.get_long() else { continue };
            if long == "help" {
                continue;
            }
            let env = argument.get_env().map(|env| env.to_string_lossy().into_owned()).unwrap_or_default();
            let default: Vec<String> = argument
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            expected.push((format!("--{long}"), env, default.join(",")));
        }
        let flags =
            |rows: &[(String, String, String)]| rows.iter().map(|row| row.0.clone()).collect::<Vec<_>>();
        assert_eq!(
            flags(&documented),
            flags(&expected),
            "docs/operations.md lists every serve option, in order"
        );
        for ((flag, env, default), (_, expected_env, expected_default)) in documented.iter().zip(&expected) {
            assert_eq!(env, expected_env, "{flag}: environment variable");
            if !expected_default.is_empty() && expected_default != "false" {
                assert_eq!(default, expected_default, "{flag}: default");
            }
        }
    }
}
