//! The `credshard` binary: `serve` runs the server; `keygen` writes a master key file; `token
//! new` makes an access token; `audit` reads the audit log; `put`, `get`, `rotate`, `list`,
//! `batch-get`, `delete`, `rotate-key`, `rekey` and `stats` are a client of a running server.
//!
//! - `cli`: the command line's definitions.
//! - `serve`: the server's process (signals, key source).
//! - `client`: the client subcommands.
//! - `tokens`: `token new`.
//! - `config_file`: `serve --config FILE` and `config check FILE`.

mod cli;
mod client;
mod config_file;
mod serve;
mod tokens;

use clap::Parser;
use credshard_engine::crypto::MasterKey;

use cli::{Cli, Command, ConfigCommand, TokenCommand};

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cli = Cli::parse_from(&argv);
    // `serve --config FILE`: the file's settings join the command line (flags and the
    // environment win), and everything is parsed again.
    if let Command::Serve(config) = &cli.command {
        if let Some(file) = config.config.clone() {
            match config_file::with_file(&argv, &file) {
                Ok(merged) => cli = Cli::parse_from(merged),
                Err(error) => fail(&error),
            }
        }
    }
    if let Err(error) = run(cli.command) {
        fail(&error);
    }
}

fn fail(error: &anyhow::Error) -> ! {
    eprintln!("error: {error:#}");
    std::process::exit(1);
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => serve::run(*config),
        Command::Keygen { out } => {
            MasterKey::generate().write_file(&out)?;
            println!(
                "wrote a new master key to {} (mode 0600); keep it away from the data dir",
                out.display()
            );
            Ok(())
        }
        Command::Token(TokenCommand::New { id, ops, owners, scopes }) => {
            tokens::new(&id, &ops, &owners, &scopes)
        }
        Command::Audit(args) => credshard_engine::audit::cli::run(&args),
        Command::Config(ConfigCommand::Check { file }) => {
            print!("{}", config_file::check(&file)?);
            Ok(())
        }
        Command::Client(command) => client::run(command),
    }
}
