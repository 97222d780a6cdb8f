//! The loadgen's connections: one [`Client`] per connection, a credshard [`AsyncClient`] or a
//! [`RedisClient`], with the ops the workload sends, and [`Failure`]: why a request failed,
//! by kind.

use std::time::Duration;

use tokio::task::JoinSet;

use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{
    AsyncClient, ClientError, ClientTls, Expiry, Kind, Labels, PutRequest, Status, EMPTY_LABELS,
};

use crate::redis::{RedisClient, RedisError};
use crate::target::Target;
use crate::value;
use crate::workload::{CONNECT_TIMEOUT_SECONDS, OWNER, SCOPE};

/// One connection to the server under load.
#[derive(Clone)]
pub enum Client {
    Credshard(AsyncClient),
    Redis(RedisClient),
}

/// What the server says it is: for the report.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Name and version.
    pub server: String,
    /// Shards (1 for redis, which serves from one thread).
    pub shard_count: u16,
}

/// How the loadgen proves who it is to a credshard server.
#[derive(Clone, Default)]
pub struct Access {
    /// The HELLO token (empty for a server without tokens).
    pub token: Vec<u8>,
    /// For credshards:// targets: the CA and name to verify the server with.
    pub tls: Option<ClientTls>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Access")
            .field("token_bytes", &self.token.len())
            .field("tls", &self.tls)
            .finish()
    }
}

/// [`connect_with`] without a token or TLS.
///
/// # Errors
/// A one-line message naming the first failure.
#[cfg(test)]
pub async fn connect(target: &Target, connections: usize) -> Result<(Vec<Client>, ServerInfo), String> {
    connect_with(target, &Access::default(), connections).await
}

/// Opens `connections` connections to `target`, all at once, and says HELLO with the token in
/// `access` (for redis: `INFO server`) on each. Returns the clients and what the first server
/// reply said.
///
/// # Errors
/// A one-line message naming the first failure.
pub async fn connect_with(
    target: &Target,
    access: &Access,
    connections: usize,
) -> Result<(Vec<Client>, ServerInfo), String> {
    if matches!(target, Target::CredshardTls { .. }) && access.tls.is_none() {
        return Err("credshards:// needs --tls-ca".to_owned());
    }
    let mut opening = JoinSet::new();
    for _ in 0..connections {
        let target = target.clone();
        let access = access.clone();
        opening.spawn(async move {
            let timeout = Duration::from_secs(CONNECT_TIMEOUT_SECONDS);
            let hello = async {
                let client = match &target {
                    Target::Credshard { address } => AsyncClient::connect_raw(address.as_str()).await,
                    Target::CredshardTls { address, .. } => {
                        let tls = access.tls.as_ref().expect("checked above");
                        AsyncClient::connect_tls_raw(address.as_str(), tls).await
                    }
                    Target::Redis { address } => {
                        let client = RedisClient::connect(address).await.map_err(|e| e.to_string())?;
                        let server = client.server_name().await.map_err(|e| e.to_string())?;
                        return Ok((Client::Redis(client), ServerInfo { server, shard_count: 1 }));
                    }
                };
                let client = client.map_err(|e| e.to_string())?;
                let hello = client.hello(&access.token).await.map_err(|e| e.to_string())?;
                let info = ServerInfo { server: hello.server, shard_count: hello.shard_count };
                Ok::<_, String>((Client::Credshard(client), info))
            };
            match tokio::time::timeout(timeout, hello).await {
                Ok(result) => result,
                Err(_) => Err(format!("no connection and HELLO within {CONNECT_TIMEOUT_SECONDS} s")),
            }
        });
    }
    let mut clients = Vec::with_capacity(connections);
    let mut first_info = None;
    while let Some(joined) = opening.join_next().await {
        let (client, info) = joined.map_err(|error| format!("connecting failed: {error}"))??;
        clients.push(client);
        first_info.get_or_insert(info);
    }
    Ok((clients, first_info.expect("at least one connection")))
}

impl Client {
    /// Writes `value` under `id`.
    pub(crate) async fn put(&self, id: &str, value: &[u8]) -> Result<(), Failure> {
        match self {
            Client::Credshard(client) => {
                client.put(&put_request(id, value)).await.map(drop).map_err(Failure::from)
            }
            Client::Redis(client) => client.set(id, value).await.map_err(Failure::from),
        }
    }

    /// Reads `id`; the value must be the loadgen's for `key_index`.
    pub(crate) async fn get(&self, id: &str, key_index: u64) -> Result<(), Failure> {
        let matches = match self {
            Client::Credshard(client) => {
                let reply = client.get(id).await?;
                reply.metadata.id == id && value::check(reply.secret.expose(), key_index)
            }
            Client::Redis(client) => match client.get(id).await? {
                Some(value) => value::check(&value, key_index),
                None => return Err(Failure::Server(Status::NotFound)),
            },
        };
        if matches {
            Ok(())
        } else {
            Err(Failure::Mismatch)
        }
    }

    /// Rotates `id` to `value` (credshard only), with the server's default grace period.
    pub(crate) async fn rotate(&self, id: &str, value: &[u8]) -> Result<(), Failure> {
        match self {
            Client::Credshard(client) => {
                let request =
                    RotateRequest { id, expected_version: None, grace_period_seconds: None, secret: value };
                client.rotate(&request).await.map(drop).map_err(Failure::from)
            }
            Client::Redis(_) => Err(Failure::Unsupported),
        }
    }

    /// Deletes `id` (credshard only).
    pub(crate) async fn delete(&self, id: &str) -> Result<(), Failure> {
        match self {
            Client::Credshard(client) => client.delete(id, None).await.map(drop).map_err(Failure::from),
            Client::Redis(_) => Err(Failure::Unsupported),
        }
    }

    /// One BATCH_GET of `ids` (credshard only); every item's value must be the loadgen's for
    /// its key. Pushes each failed item onto `item_failures`.
    pub(crate) async fn batch_get(
        &self,
        ids: &[String],
        key_indices: &[u64],
        item_failures: &mut Vec<Failure>,
    ) -> Result<(), Failure> {
        let Client::Credshard(client) = self else { return Err(Failure::Unsupported) };
        let items = client.batch_get(ids).await?;
        if items.len() != ids.len() {
            return Err(Failure::Protocol);
        }
        for ((item, id), &key_index) in items.into_iter().zip(ids).zip(key_indices) {
            match item {
                Ok(reply) => {
                    if reply.metadata.id != *id || !value::check(reply.secret.expose(), key_index) {
                        item_failures.push(Failure::Mismatch);
                    }
                }
                Err(error) => item_failures.push(Failure::from(error)),
            }
        }
        Ok(())
    }

    /// Reads the metadata of `id` (credshard only: a redis target with get_meta in the mix is
    /// refused before the run).
    pub(crate) async fn get_meta(&self, id: &str) -> Result<(), Failure> {
        match self {
            Client::Credshard(client) => {
                if client.get_meta(id).await?.metadata.id == id {
                    Ok(())
                } else {
                    Err(Failure::Mismatch)
                }
            }
            Client::Redis(_) => Err(Failure::Unsupported),
        }
    }
}

/// Why one request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Server(Status),
    /// The connection failed or was closed.
    Io,
    /// The reply did not decode.
    Protocol,
    /// A read returned a value that is not the loadgen's for that key.
    Mismatch,
    /// A redis error reply (`-ERR ...`).
    Redis,
    /// The op does not exist for this target.
    Unsupported,
    /// A `batch_get` answered with at least one failed item (counted by kind apart).
    BatchItem,
}

impl Failure {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Failure::Server(status) => status.name(),
            Failure::Io => "io",
            Failure::Protocol => "protocol",
            Failure::Mismatch => "mismatch",
            Failure::Redis => "redis_error",
            Failure::Unsupported => "unsupported",
            Failure::BatchItem => "batch_item",
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        match error {
            ClientError::Server { status, .. } => Failure::Server(status),
            ClientError::Io(_) | ClientError::Closed | ClientError::Tls(_) => Failure::Io,
            ClientError::Frame(_)
            | ClientError::Decode(_)
            | ClientError::UnknownStatus(_)
            | ClientError::UnexpectedResponse { .. } => Failure::Protocol,
        }
    }
}

impl From<RedisError> for Failure {
    fn from(error: RedisError) -> Failure {
        match error {
            RedisError::Io => Failure::Io,
            RedisError::Protocol(_) => Failure::Protocol,
            RedisError::Server(_) => Failure::Redis,
        }
    }
}

/// The PUT the loadgen sends for `id`.
pub(crate) fn put_request<'a>(id: &'a str, value: &'a [u8]) -> PutRequest<'a> {
    PutRequest {
        id,
        owner: OWNER,
        scope: SCOPE,
        kind: Kind::Token,
        expected_version: None,
        expiry: Expiry::Never,
        labels: Labels::from_validated(EMPTY_LABELS),
        secret: value,
    }
}
