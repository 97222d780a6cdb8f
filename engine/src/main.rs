//! The `credshard` binary: `serve` runs the server; `keygen` writes a master key file; `token
//! new` makes an access token; `audit` reads the audit log; `put`, `get`, `rotate`, `list`,
//! `batch-get`, `delete` and `stats` are a client of a running server.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use credshard_engine::auth::TokenSet;
use credshard_engine::config::Switch;
use credshard_engine::crypto::{Argon2Cost, KeySource, MasterKey};
use credshard_engine::{Server, ServerConfig};
use credshard_protocol::op::batch_get::BATCH_IDS_MAX;
use credshard_protocol::op::keys::RekeyRequest;
use credshard_protocol::op::list::{ListRequest, LIST_PAGE_MAX};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{encode_labels, Client, ClientTls, Expiry, Kind, Labels, PutRequest};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(name = "credshard", version, about = "A thread-per-core encrypted credential store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The environment variable the client subcommands read their access token from.
const TOKEN_VARIABLE: &str = "CREDSHARD_TOKEN";

/// Where the server is. The access token, if the server needs one, is read from the
/// CREDSHARD_TOKEN environment variable.
#[derive(clap::Args)]
struct Connect {
    /// Server address: HOST:PORT, or credshards://HOST:PORT for TLS.
    #[arg(long, env = "CREDSHARD_ADDR", default_value = "127.0.0.1:7373")]
    addr: String,
    /// CA certificate (PEM) that signed the server's certificate; for credshards://.
    #[arg(long, env = "CREDSHARD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host in --addr).
    #[arg(long, env = "CREDSHARD_TLS_NAME")]
    tls_name: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
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
enum Command {
    /// Run the server.
    Serve(ServerConfig),
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
        #[command(flatten)]
        connect: Connect,
    },
    /// Store a new secret (from standard input) as a new version; the replaced version stays
    /// readable for the grace period, then is retired.
    Rotate {
        id: String,
        /// Grace period of the replaced version, in seconds (default: the server's, 24 h).
        #[arg(long)]
        grace: Option<u64>,
        /// Compare-and-set: only rotate if the current version is V.
        #[arg(long)]
        if_version: Option<u64>,
        /// Keep standard input byte for byte (do not drop a trailing newline).
        #[arg(long)]
        raw: bool,
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
    /// Delete a credential and all its versions.
    Delete {
        id: String,
        /// Only delete if the current version is V.
        #[arg(long)]
        if_version: Option<u64>,
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

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli.command) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => serve(config),
        Command::Keygen { out } => {
            MasterKey::generate().write_file(&out)?;
            println!(
                "wrote a new master key to {} (mode 0600); keep it away from the data dir",
                out.display()
            );
            Ok(())
        }
        Command::Token(TokenCommand::New { id, ops, owners, scopes }) => {
            let mut random = Zeroizing::new([0u8; 32]);
            getrandom::fill(random.as_mut())
                .map_err(|error| anyhow::anyhow!("reading random bytes: {error}"))?;
            let token = Zeroizing::new(format!("cst_{}", hex::encode(random.as_ref())));
            let table = new_token_table(&id, token.as_bytes(), &ops, &owners, &scopes)?;
            println!("token: {}", token.as_str());
            println!("(shown once: give it to the client, e.g. in CREDSHARD_TOKEN)\n");
            print!("{table}");
            Ok(())
        }
        Command::Audit(args) => credshard_engine::audit::cli::run(&args),
        Command::Put { id, owner, scope, kind, ttl, expires_at_ms, if_version, labels, raw, connect } => {
            let kind = Kind::from_name(&kind).with_context(|| {
                format!("unknown kind {kind:?} (generic, api-key, password, token, certificate)")
            })?;
            let pairs = labels
                .iter()
                .map(|label| {
                    label.split_once('=').with_context(|| format!("label {label:?} is not KEY=VALUE"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut encoded_labels = bytes::BytesMut::new();
            encode_labels(&pairs, &mut encoded_labels);
            let secret = read_secret(raw)?;
            let expiry = match (ttl, expires_at_ms) {
                (Some(seconds), _) => Expiry::TtlMs(seconds.saturating_mul(1000)),
                (None, Some(at_ms)) => Expiry::AtUnixMs(at_ms),
                (None, None) => Expiry::Never,
            };
            let request = PutRequest {
                id: &id,
                owner: &owner,
                scope: &scope,
                kind,
                expected_version: if_version,
                expiry,
                labels: Labels::from_validated(&encoded_labels),
                secret: &secret,
            };
            let version = connect_to(&connect)?.put(&request)?;
            println!("{id} version {version}");
            Ok(())
        }
        Command::Get { id, meta, version, connect } => {
            let mut client = connect_to(&connect)?;
            if meta {
                let reply = client.get_meta(&id)?;
                print_metadata(&reply.metadata);
                for info in reply.versions {
                    println!(
                        "version {}: {} (written at {} ms)",
                        info.version,
                        info.state.name(),
                        info.created_at_ms
                    );
                }
                return Ok(());
            }
            let reply = client.get_version(&id, version.unwrap_or(0))?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(reply.secret.expose())?;
            stdout.write_all(b"\n")?;
            Ok(())
        }
        Command::Rotate { id, grace, if_version, raw, connect } => {
            let secret = read_secret(raw)?;
            let request = RotateRequest {
                id: &id,
                expected_version: if_version,
                grace_period_seconds: grace,
                secret: &secret,
            };
            let version = connect_to(&connect)?.rotate(&request)?;
            println!("{id} version {version}");
            Ok(())
        }
        Command::List { owner, scope, limit, connect } => {
            if owner.is_empty() && scope.is_empty() {
                bail!("give --owner, --scope or both");
            }
            let mut client = connect_to(&connect)?;
            let mut cursor = Vec::new();
            let mut printed = 0;
            while printed < limit {
                let page_limit = (limit - printed).min(LIST_PAGE_MAX as usize) as u16;
                let request =
                    ListRequest { owner: &owner, scope: &scope, limit: page_limit, cursor: &cursor };
                let page = client.list(&request)?;
                for item in &page.items {
                    let expiry = item.expires_at_ms.map_or("never".to_owned(), |at_ms| at_ms.to_string());
                    println!(
                        "{} version {} owner {} scope {} kind {} expires_at_ms {expiry}",
                        item.id,
                        item.version,
                        item.owner,
                        item.scope,
                        item.kind.name()
                    );
                }
                printed += page.items.len();
                if page.next_cursor.is_empty() {
                    break;
                }
                cursor = page.next_cursor;
            }
            Ok(())
        }
        Command::BatchGet { ids, connect } => {
            if ids.len() > BATCH_IDS_MAX {
                bail!("at most {BATCH_IDS_MAX} ids per batch");
            }
            let results = connect_to(&connect)?.batch_get(&ids)?;
            let mut stdout = std::io::stdout().lock();
            let mut failed = false;
            for (id, result) in ids.iter().zip(results) {
                match result {
                    Ok(reply) => {
                        write!(stdout, "{id} ")?;
                        stdout.write_all(reply.secret.expose())?;
                        writeln!(stdout)?;
                    }
                    Err(error) => {
                        failed = true;
                        writeln!(stdout, "{id} error: {error}")?;
                    }
                }
            }
            if failed {
                bail!("some ids could not be read");
            }
            Ok(())
        }
        Command::Delete { id, if_version, connect } => {
            let reply = connect_to(&connect)?.delete(&id, if_version)?;
            println!("deleted {id} (was version {})", reply.version);
            Ok(())
        }
        Command::RotateKey { wait, connect } => {
            let mut client = connect_to(&connect)?;
            let reply = client.rotate_key()?;
            println!("data key {} is now active ({} keys in the ring)", reply.key_id, reply.data_keys);
            if wait {
                loop {
                    let stats = client.stats()?;
                    let retiring = stats.get("data_keys_retiring").unwrap_or(0);
                    if retiring == 0 {
                        break;
                    }
                    eprintln!(
                        "re-encrypting: {} versions so far, {retiring} keys retiring",
                        stats.get("records_rewrapped").unwrap_or(0)
                    );
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                println!("every record is on data key {}; the older keys are dropped", reply.key_id);
            }
            Ok(())
        }
        Command::Rekey { new_key_file, new_passphrase_env, connect } => {
            let data_keys = match (&new_key_file, &new_passphrase_env) {
                (Some(path), _) => {
                    let key = MasterKey::read_file(path)?;
                    connect_to(&connect)?.rekey(&RekeyRequest::Key(key.bytes()))?.data_keys
                }
                (None, Some(variable)) => {
                    let passphrase = Zeroizing::new(
                        std::env::var(variable)
                            .with_context(|| format!("environment variable {variable} is not set"))?,
                    );
                    if passphrase.is_empty() {
                        bail!("environment variable {variable} is empty");
                    }
                    connect_to(&connect)?.rekey(&RekeyRequest::Passphrase(passphrase.as_bytes()))?.data_keys
                }
                (None, None) => bail!("give --new-key-file or --new-passphrase-env"),
            };
            let restart_with = match (&new_key_file, &new_passphrase_env) {
                (Some(path), _) => format!("--key-file {}", path.display()),
                (None, Some(variable)) => format!("--passphrase-env {variable} (holding the new passphrase)"),
                (None, None) => unreachable!(),
            };
            println!("{data_keys} data keys rewrapped under the new master key; restart the server with {restart_with}");
            Ok(())
        }
        Command::Stats { connect } => {
            for (name, value) in connect_to(&connect)?.stats()?.values {
                println!("{name} {value}");
            }
            Ok(())
        }
    }
}

/// Reads a secret from standard input, dropping one trailing newline unless `raw`.
fn read_secret(raw: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut secret = Zeroizing::new(Vec::new());
    std::io::stdin().read_to_end(&mut secret).context("reading the secret from standard input")?;
    if !raw {
        for ending in [&b"\r\n"[..], b"\n"] {
            if secret.ends_with(ending) {
                let length = secret.len() - ending.len();
                secret.truncate(length);
                break;
            }
        }
    }
    Ok(secret)
}

fn connect_to(connect: &Connect) -> anyhow::Result<Client> {
    // The token comes from the environment only: a command line is visible to other users.
    let token = Zeroizing::new(std::env::var(TOKEN_VARIABLE).unwrap_or_default());
    let (address, connected) = match connect.addr.strip_prefix("credshards://") {
        Some(address) => {
            let ca = connect.tls_ca.as_ref().context("credshards:// needs --tls-ca (or CREDSHARD_TLS_CA)")?;
            let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
            let name =
                connect.tls_name.as_deref().unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
            let tls = ClientTls::from_ca_file(ca, name)?;
            (address, Client::connect_tls_raw(address, &tls))
        }
        None => {
            let address = connect.addr.strip_prefix("credshard://").unwrap_or(&connect.addr);
            (address, Client::connect_raw(address))
        }
    };
    let mut client = connected.with_context(|| format!("cannot reach credshard at {address}"))?;
    client
        .hello(token.as_bytes())
        .with_context(|| format!("credshard at {address} refused the connection"))?;
    Ok(client)
}

/// The `[[token]]` table for a token, after checking it parses as the server will parse it.
fn new_token_table(
    id: &str,
    token: &[u8],
    ops: &[String],
    owners: &[String],
    scopes: &[String],
) -> anyhow::Result<String> {
    let quoted = |items: &[String]| items.iter().map(|item| toml_string(item)).collect::<Vec<_>>().join(", ");
    let mut table = format!(
        "[[token]]\nid = {}\nsha256 = \"{}\"\nops = [{}]\n",
        toml_string(id),
        hex::encode(credshard_engine::auth::hash_token(token)),
        quoted(ops)
    );
    if !owners.is_empty() {
        table += &format!("owners = [{}]\n", quoted(owners));
    }
    if !scopes.is_empty() {
        table += &format!("scopes = [{}]\n", quoted(scopes));
    }
    TokenSet::parse(&table).map_err(|reason| anyhow::anyhow!("{reason}"))?;
    Ok(table)
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn print_metadata(metadata: &credshard_protocol::op::metadata::Metadata) {
    println!("id {}", metadata.id);
    println!("owner {}", metadata.owner);
    println!("scope {}", metadata.scope);
    println!("kind {}", metadata.kind.name());
    println!("version {}", metadata.version);
    println!("created_at_ms {}", metadata.created_at_ms);
    println!("updated_at_ms {}", metadata.updated_at_ms);
    match metadata.expires_at_ms {
        Some(at_ms) => println!("expires_at_ms {at_ms}"),
        None => println!("expires_at_ms never"),
    }
    println!("key_id {}", metadata.key_id);
    for (key, value) in &metadata.labels {
        println!("label {key}={value}");
    }
}

fn serve(config: ServerConfig) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Refuse a bad configuration before anything is written to the data dir.
    config.validate()?;
    // Everything the server creates (data dir, logs, snapshots, key ring, audit files) is for
    // its own user only.
    // SAFETY: umask only sets this process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let key_source = key_source(&config)?;
    // A file-size limit (RLIMIT_FSIZE) must fail the write with EFBIG, which the log handles
    // like a full disk, rather than kill the process.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // Block SIGINT, SIGTERM and SIGHUP before the executor threads start (they inherit the
    // mask), so that this thread alone receives them: it stops the server in order, or reloads
    // the tokens file.
    let signals = block_stop_signals();
    let server = Server::start(&config, key_source)?;
    tracing::info!(
        address = %server.local_address(),
        shards = server.store().shard_count(),
        data_dir = %config.data_dir.display(),
        "credshard listening"
    );
    if config.fsync == credshard_engine::config::FsyncMode::Never {
        tracing::warn!("--fsync never: writes are acknowledged once in the page cache; a power loss or kernel crash can lose acknowledged writes");
    }
    // Scripts and tests read the bound address (useful with port 0) from this line.
    println!("listening on {}", server.local_address());
    std::io::stdout().flush()?;
    if config.tokens.is_none() {
        tracing::warn!(
            "no --tokens: the server is open to every local user (loopback only); see docs/security.md"
        );
    }
    loop {
        let signal = wait_for_signal(&signals);
        if signal != libc::SIGHUP {
            tracing::info!(signal, "stopping");
            break;
        }
        if config.audit == Switch::On {
            tracing::info!("SIGHUP: each executor reopens its audit file");
        }
        match server.reload() {
            Ok(count) if config.tokens.is_some() => tracing::info!(tokens = count, "tokens file reloaded"),
            Ok(_) => tracing::info!("SIGHUP: no --tokens file to reload"),
            Err(error) => {
                tracing::error!(%error, "tokens file NOT reloaded; the previous tokens stay in force")
            }
        }
    }
    server.join()?;
    Ok(())
}

fn key_source(config: &ServerConfig) -> anyhow::Result<KeySource> {
    if let Some(path) = &config.key_file {
        return Ok(KeySource::KeyFile(path.clone()));
    }
    if let Some(variable) = &config.passphrase_env {
        let passphrase =
            std::env::var(variable).with_context(|| format!("environment variable {variable} is not set"))?;
        if passphrase.is_empty() {
            bail!("environment variable {variable} is empty");
        }
        return Ok(KeySource::Passphrase(Zeroizing::new(passphrase.into_bytes()), Argon2Cost::default()));
    }
    let path = config.data_dir.join("master.key");
    if !path.exists() {
        std::fs::create_dir_all(&config.data_dir)?;
        MasterKey::generate().write_file(&path)?;
        tracing::warn!(
            path = %path.display(),
            "NO MASTER KEY GIVEN: generated one INSIDE the data dir. Anyone who can read the data dir can \
             decrypt every secret. Production keeps the key elsewhere: `credshard keygen --out PATH` and \
             `--key-file PATH`, or `--passphrase-env VAR`."
        );
    } else {
        tracing::warn!(path = %path.display(), "using the master key stored inside the data dir (not for production)");
    }
    Ok(KeySource::KeyFile(path))
}

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a local sigset_t; pthread_sigmask only changes
    // this thread's mask. All pointers are to live locals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` is an initialised signal set and `signal` a live local; sigwait only
    // writes the received signal number into it.
    unsafe {
        libc::sigwait(set, &mut signal);
    }
    signal
}
