//! `credshard serve`: logging, the process settings a server needs (umask, signals), the
//! master key's source, then the server until SIGINT or SIGTERM; SIGHUP reloads the tokens
//! file and reopens the audit files.

use std::io::Write;

use anyhow::{bail, Context};
use credshard_engine::config::{LogFormat, Switch};
use credshard_engine::crypto::{Argon2Cost, KeySource, MasterKey};
use credshard_engine::{Server, ServerConfig};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::stat::{umask, Mode};
use zeroize::Zeroizing;

pub fn run(config: ServerConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // Refuse a bad configuration before anything is written to the data dir.
    config.validate()?;
    // Everything the server creates (data dir, logs, snapshots, key ring, audit files) is for
    // its own user only. Set while this is the only thread, so no file is created under the
    // old mask meanwhile.
    umask(Mode::from_bits_truncate(0o077));
    let key_source = key_source(&config)?;
    // A file-size limit (RLIMIT_FSIZE) must fail the write with EFBIG, which the log handles
    // like a full disk, rather than kill the process.
    // SAFETY: `signal` is unsafe because a handler function runs in signal context; SIG_IGN
    // installs no handler, and no other thread exists yet to race on the disposition.
    unsafe {
        signal::signal(Signal::SIGXFSZ, SigHandler::SigIgn)?;
    }
    // Block SIGINT, SIGTERM and SIGHUP before the executor threads start (they inherit the
    // mask), so that this thread alone receives them: it stops the server in order, or reloads
    // the tokens file.
    let signals = SigSet::from_iter([Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP]);
    signals.thread_block()?;
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
    if let Some(resp) = server.resp_address() {
        tracing::info!(address = %resp, "RESP listener on");
        println!("resp listening on {resp}");
    }
    if let Some(metrics) = server.metrics_address() {
        tracing::info!(address = %metrics, "metrics at /metrics");
        println!("metrics listening on {metrics}");
    }
    std::io::stdout().flush()?;
    if config.tokens.is_none() {
        tracing::warn!(
            "no --tokens: the server is open to every local user (loopback only); see docs/security.md"
        );
    }
    loop {
        let signal = signals.wait()?;
        if signal != Signal::SIGHUP {
            tracing::info!(signal = signal.as_str(), "stopping");
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
