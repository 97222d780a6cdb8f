//! The `credshard` binary: `serve` runs the server; `keygen` writes a master key file; `token
//! new` makes an access token; `audit` reads the audit log; `put`, `get`, `rotate`, `list`,
//! `batch-get`, `delete`, `rotate-key`, `rekey` and `stats` are a client of a running server.
//!
//! - `cli`: the command line's definitions.
//! - `serve`: the server's process (signals, key source).
//! - `client`: the client subcommands.
//! - `tokens`: `token new`.

mod cli;
mod client;
mod serve;
mod tokens;

use clap::Parser;
use credshard_engine::crypto::MasterKey;

use cli::{Cli, Command, TokenCommand};

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli.command) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => serve::run(config),
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
        Command::Client(command) => client::run(command),
    }
}
