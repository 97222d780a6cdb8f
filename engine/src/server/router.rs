//! Writes to the shard that owns them. A write for this executor's own shard is applied at
//! once by its [`ShardWriter`]; a write for another shard travels through a bounded glommio
//! channel (the mesh) to that shard's executor, which applies it. Either way the outcome is
//! sent through a oneshot once the write's log batch is committed. Reply channels never block
//! the applying side, so the mesh cannot deadlock.

use std::cell::RefCell;
use std::rc::Rc;

use credshard_protocol::{Op, Request};
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::LocalSender;
use zeroize::Zeroizing;

use std::sync::Arc;

use crate::auth::{Acl, Principal};
use crate::data::{Entry, ShardWriter, Store, Write};
use crate::error::{OpError, WriteOutcome};

/// What travels between executors: writes for the shard that owns them, and, with a bounded
/// cache, requests to read credentials the owner does not hold from the database.
pub enum ShardMessage {
    Write(WriteMessage),
    Load(LoadMessage),
}

/// Credentials a reader missed in the owning shard's map: the owner reads them from the
/// database (one query for all that are missing at once, one per id however many ask),
/// installs them, and answers.
pub struct LoadMessage {
    pub(crate) ids: Vec<Box<str>>,
    pub(crate) reply: oneshot::Sender<LoadOutcome>,
}

/// What a load read: the ids the database does not have, and the others' kept versions (also
/// installed in their shard, which may evict them again before the reader gets to them: the
/// reader is served from these then).
#[derive(Default)]
pub struct LoadedCredentials {
    pub absent: Vec<Box<str>>,
    pub found: Vec<(Box<str>, Arc<Entry>)>,
}

pub type LoadOutcome = Result<LoadedCredentials, OpError>;

/// A write travelling to the executor of the shard that owns it.
pub struct WriteMessage {
    pub(crate) op: Op,
    /// The request body, re-decoded by the owner. It may hold a plaintext secret, so it is
    /// wiped when dropped.
    pub(crate) body: Zeroizing<Vec<u8>>,
    /// The time the request was received, so TTLs do not depend on which executor applies it.
    pub(crate) received_at_ms: u64,
    /// Who asked: the owner checks the write against this principal's ACL.
    pub(crate) principal: Arc<Principal>,
    pub(crate) reply: oneshot::Sender<WriteOutcome>,
}

pub struct Router {
    shard_id: usize,
    writer: RefCell<ShardWriter>,
    senders: Senders<ShardMessage>,
    /// With a shared database as the system of record: this shard's writes wait here for the
    /// database writer (`server::postgres`), whichever executor they came from.
    database_queue: Option<LocalSender<WriteMessage>>,
    /// With a bounded cache: this shard's loads wait here for its loader.
    load_queue: Option<LocalSender<LoadMessage>>,
}

impl Router {
    pub fn new(
        writer: ShardWriter,
        senders: Senders<ShardMessage>,
        database_queue: Option<LocalSender<WriteMessage>>,
        load_queue: Option<LocalSender<LoadMessage>>,
    ) -> Router {
        Router {
            shard_id: writer.shard_id(),
            writer: RefCell::new(writer),
            senders,
            database_queue,
            load_queue,
        }
    }

    /// Reads `ids` (each uncached in its shard) from the database into their shards: each
    /// owner's loader gets its ids in one message; returns the ids the database does not have.
    ///
    /// # Errors
    /// [`OpError::Unavailable`] when the database cannot be read (or a shard is stopping).
    pub async fn load(&self, store: &Store, ids: Vec<Box<str>>) -> LoadOutcome {
        let mut by_shard: Vec<(usize, Vec<Box<str>>)> = Vec::new();
        for id in ids {
            let shard_id = store.shard_for(&id);
            match by_shard.iter_mut().find(|(owner, _)| *owner == shard_id) {
                Some((_, ids)) => ids.push(id),
                None => by_shard.push((shard_id, vec![id])),
            }
        }
        let mut outcomes = Vec::with_capacity(by_shard.len());
        for (shard_id, ids) in by_shard {
            let (reply, outcome) = oneshot::channel();
            let message = LoadMessage { ids, reply };
            if shard_id == self.shard_id {
                let Some(queue) = &self.load_queue else {
                    return Err(OpError::Internal("a load without a bounded cache"));
                };
                // A closed queue (shutting down) drops the reply: reported unavailable below.
                let _ = queue.send(message).await;
            } else {
                let _ = self.senders.send_to(shard_id, ShardMessage::Load(message)).await;
            }
            outcomes.push(outcome);
        }
        let mut loaded = LoadedCredentials::default();
        for outcome in futures::future::join_all(outcomes).await {
            match outcome {
                Ok(Ok(part)) => {
                    loaded.absent.extend(part.absent);
                    loaded.found.extend(part.found);
                }
                Ok(Err(error)) => return Err(error),
                Err(oneshot::Canceled) => {
                    return Err(OpError::Unavailable("the owning shard stopped before answering"))
                }
            }
        }
        Ok(loaded)
    }

    /// True when writes go through a shared database: every write then travels as a
    /// [`WriteMessage`] ([`Router::forward`]), to this shard's queue or another's.
    pub fn through_database(&self) -> bool {
        self.database_queue.is_some()
    }

    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Applies a write to this executor's own shard and arranges for `reply` to receive its
    /// outcome: at once for a refused write, once its log batch is committed for an applied one.
    /// `acl` is the caller's: the writer checks the credential's owner and scope against it.
    pub fn write(&self, request: &Request<'_>, now_ms: u64, acl: &Acl, reply: oneshot::Sender<WriteOutcome>) {
        match Write::of(request) {
            Some(write) => self.writer.borrow_mut().submit(write, now_ms, acl, reply),
            None => {
                let _ = reply.send(Err(OpError::Internal("not a write")));
            }
        }
    }

    /// Sends a write to `shard_id`'s executor; the receiver yields its outcome. Waits while
    /// that executor's queue is full (backpressure on this connection only).
    pub async fn forward(
        &self,
        shard_id: usize,
        op: Op,
        body: &[u8],
        received_at_ms: u64,
        principal: Arc<Principal>,
    ) -> oneshot::Receiver<WriteOutcome> {
        let (reply, outcome) = oneshot::channel();
        let body = Zeroizing::new(body.to_vec());
        let message = WriteMessage { op, body, received_at_ms, principal, reply };
        if shard_id == self.shard_id {
            let queue =
                self.database_queue.as_ref().expect("own-shard writes travel only through the database");
            // A closed queue (shutting down) drops the reply: the receiver reports it unavailable.
            let _ = queue.send(message).await;
            return outcome;
        }
        // If the peer executor is gone (shutting down), the message and its reply sender are
        // dropped, and the receiver reports the write as unavailable.
        let _ = self.senders.send_to(shard_id, ShardMessage::Write(message)).await;
        outcome
    }

    /// Runs `with` on this shard's writer (the background tasks of `server::maintenance`
    /// use it between requests; never held across an await).
    pub fn with_writer<T>(&self, with: impl FnOnce(&mut ShardWriter) -> T) -> T {
        with(&mut self.writer.borrow_mut())
    }

    /// Serves writes that other executors send to this shard, until they hang up.
    pub fn spawn_peer_tasks(
        self: &Rc<Router>,
        mut receivers: Receivers<ShardMessage>,
        limits: credshard_protocol::Limits,
    ) {
        for (_peer, receiver) in receivers.streams() {
            let router = Rc::clone(self);
            glommio::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
                    let message = match message {
                        ShardMessage::Write(message) => message,
                        ShardMessage::Load(load) => {
                            match &router.load_queue {
                                Some(queue) => {
                                    let _ = queue.send(load).await;
                                }
                                None => {
                                    let _ = load
                                        .reply
                                        .send(Err(OpError::Internal("a load without a bounded cache")));
                                }
                            }
                            continue;
                        }
                    };
                    if let Some(queue) = &router.database_queue {
                        let _ = queue.send(message).await;
                        continue;
                    }
                    // The connection may have closed meanwhile; the outcome is then unread.
                    match Request::decode(message.op as u8, &message.body, &limits) {
                        Ok(request) => router.write(
                            &request,
                            message.received_at_ms,
                            &message.principal.acl,
                            message.reply,
                        ),
                        Err(_) => {
                            let _ = message
                                .reply
                                .send(Err(OpError::Internal("a forwarded write failed to decode")));
                        }
                    }
                }
            })
            .detach();
        }
    }
}
