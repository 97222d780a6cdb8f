//! The client subcommands: each connects to a running server (the token from
//! `CREDSHARD_TOKEN`, never from the command line), makes its requests and prints the replies.

use std::io::{Read, Write};

use anyhow::{bail, Context};
use credshard_engine::crypto::MasterKey;
use credshard_protocol::op::batch_get::BATCH_IDS_MAX;
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::get::Stage;
use credshard_protocol::op::keys::RekeyRequest;
use credshard_protocol::op::list::{ListRequest, LIST_PAGE_MAX};
use credshard_protocol::op::policy::{Policy, SetPolicyRequest};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::op::stage::PromoteRequest;
use credshard_protocol::op::watch::{WatchFilter, WatchPosition, WatchRequest};
use credshard_protocol::{encode_labels, Client, ClientTls, Expiry, Kind, Labels, PutRequest};
use zeroize::Zeroizing;

use crate::cli::{ClientCommand, Connect, TOKEN_VARIABLE};

pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Put {
            id,
            owner,
            scope,
            kind,
            ttl,
            expires_at_ms,
            if_version,
            labels,
            raw,
            pending,
            connect,
        } => {
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
            let mut client = connect_to(&connect)?;
            match pending {
                true => {
                    println!("{id} version {} pending (`promote` makes it current)", client.stage(&request)?)
                }
                false => println!("{id} version {}", client.put(&request)?),
            }
            Ok(())
        }
        ClientCommand::Get { id, meta, version, stage, connect } => {
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
            let reply = match stage {
                Some(name) => {
                    let stage = Stage::from_name(&name)
                        .with_context(|| format!("unknown stage {name:?} (current, pending, previous)"))?;
                    client.get_stage(&id, stage)?
                }
                None => client.get_version(&id, version.unwrap_or(0))?,
            };
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(reply.secret.expose())?;
            stdout.write_all(b"\n")?;
            Ok(())
        }
        ClientCommand::Rotate { id, grace: _, if_version, raw, pending: true, connect } => {
            let secret = read_secret(raw)?;
            let mut client = connect_to(&connect)?;
            // STAGE carries PUT's fields: those of the current version, read first. The stage
            // is conditional on the version read, so a write in between fails it instead of
            // staging over changed metadata.
            let current = client.get_meta(&id)?.metadata;
            if if_version.is_some_and(|expected| expected != current.version) {
                bail!("version conflict: the current version is {}", current.version);
            }
            let pairs: Vec<(&str, &str)> =
                current.labels.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
            let mut encoded_labels = bytes::BytesMut::new();
            encode_labels(&pairs, &mut encoded_labels);
            let request = PutRequest {
                id: &id,
                owner: &current.owner,
                scope: &current.scope,
                kind: current.kind,
                expected_version: Some(current.version),
                expiry: current.expires_at_ms.map_or(Expiry::Never, Expiry::AtUnixMs),
                labels: Labels::from_validated(&encoded_labels),
                secret: &secret,
            };
            let version = client.stage(&request)?;
            println!("{id} version {version} pending (`promote` makes it current)");
            Ok(())
        }
        ClientCommand::Promote { id, grace, if_version, connect } => {
            let request =
                PromoteRequest { id: &id, expected_version: if_version, grace_period_seconds: grace };
            let version = connect_to(&connect)?.promote(&request)?;
            println!("{id} version {version} is current");
            Ok(())
        }
        ClientCommand::Rotate { id, grace, if_version, raw, pending: false, connect } => {
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
        ClientCommand::List { owner, scope, limit, connect } => {
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
        ClientCommand::BatchGet { ids, connect } => {
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
        ClientCommand::Delete { id, if_version, purge, recovery_window, connect } => {
            let request = DeleteRequest {
                purge,
                recovery_window_seconds: recovery_window,
                ..DeleteRequest::new(&id, if_version)
            };
            let reply = connect_to(&connect)?.delete_with(&request)?;
            match purge {
                true => println!("purged {id} (was version {})", reply.version),
                false => println!("deleted {id} (was version {}; `undelete` restores it)", reply.version),
            }
            Ok(())
        }
        ClientCommand::Undelete { id, connect } => {
            let version = connect_to(&connect)?.undelete(&id)?;
            println!("{id} is served again at version {version}");
            Ok(())
        }
        ClientCommand::Watch { id, owner, scope_prefix, position_file, count, connect } => {
            let filter = match (&id, &owner, &scope_prefix) {
                (Some(id), _, _) => WatchFilter::Id(id),
                (_, Some(owner), _) => WatchFilter::Owner(owner),
                (_, _, Some(prefix)) => WatchFilter::ScopePrefix(prefix),
                _ => WatchFilter::All,
            };
            let saved = match &position_file {
                Some(path) if path.exists() => Some(
                    WatchPosition::from_text(&std::fs::read_to_string(path)?)
                        .with_context(|| format!("{} does not hold a watch position", path.display()))?,
                ),
                _ => None,
            };
            let resume = saved.as_ref().and_then(WatchPosition::resume);
            let mut client = connect_to(&connect)?;
            let reply = client.watch(&WatchRequest { filter, resume })?;
            if saved.is_some() && !reply.resumed {
                eprintln!(
                    "warning: could not resume from the saved position: changes since then may be missed"
                );
            }
            let mut position = WatchPosition::from_reply(&reply);
            let mut stdout = std::io::stdout().lock();
            let mut seen = 0;
            while count.is_none_or(|count| seen < count) {
                let event = client.next_event()?;
                writeln!(
                    stdout,
                    "{}:{} {} {} version {} at_ms {} owner {} scope {}",
                    event.shard,
                    event.seq,
                    event.change.name(),
                    event.id,
                    event.version,
                    event.at_ms,
                    event.owner,
                    event.scope
                )?;
                stdout.flush()?;
                position.advance(&event);
                if let Some(path) = &position_file {
                    std::fs::write(path, position.to_text())?;
                }
                seen += 1;
            }
            Ok(())
        }
        ClientCommand::Policy {
            id,
            set,
            max_versions,
            cas_required,
            delete_version_after,
            metadata,
            connect,
        } => {
            let mut client = connect_to(&connect)?;
            if set {
                let pairs = metadata
                    .iter()
                    .map(|pair| {
                        pair.split_once('=').with_context(|| format!("--meta {pair:?} is not KEY=VALUE"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mut encoded = bytes::BytesMut::new();
                encode_labels(&pairs, &mut encoded);
                let policy = Policy {
                    max_versions: max_versions.unwrap_or(0),
                    cas_required,
                    delete_version_after_seconds: delete_version_after.unwrap_or(0),
                    metadata: Labels::from_validated(&encoded),
                };
                client.set_policy(&SetPolicyRequest { id: &id, policy })?;
            }
            let policy = client.get_policy(&id)?;
            let max_versions = match policy.max_versions {
                0 => "server default".to_owned(),
                count => count.to_string(),
            };
            println!("max_versions {max_versions}");
            println!("cas_required {}", policy.cas_required);
            match policy.delete_version_after_seconds {
                0 => println!("delete_version_after never"),
                seconds => println!("delete_version_after {seconds} s"),
            }
            for (key, value) in policy.metadata {
                println!("meta {key}={value}");
            }
            Ok(())
        }
        ClientCommand::Destroy { id, version, connect } => {
            let version = connect_to(&connect)?.destroy(&id, version)?;
            println!("destroyed version {version} of {id}");
            Ok(())
        }
        ClientCommand::RotateKey { wait, connect } => {
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
        ClientCommand::Rekey { new_key_file, new_passphrase_env, connect } => {
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
        ClientCommand::Stats { connect } => {
            for (name, value) in connect_to(&connect)?.stats()?.values {
                println!("{name} {value}");
            }
            Ok(())
        }
    }
}

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
