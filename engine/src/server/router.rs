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
use zeroize::Zeroizing;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Acl, Principal};
use crate::error::{OpError, WriteOutcome};
use crate::metrics::{ExecutorMetrics, Metrics};
use crate::shard::ShardWriter;

/// How often the re-encryption of retiring data keys takes its next slice of credentials.
const REWRAP_TICK: Duration = Duration::from_millis(10);
/// How often a shard with nothing to re-encrypt checks again.
const REWRAP_IDLE_CHECK: Duration = Duration::from_millis(200);
/// The pause after a pass in which some credentials could not be re-encrypted.
const REWRAP_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// A write travelling to the executor of the shard that owns it.
pub struct WriteMessage {
    op: Op,
    /// The request body, re-decoded by the owner. It may hold a plaintext secret, so it is
    /// wiped when dropped.
    body: Zeroizing<Vec<u8>>,
    /// The time the request was received, so TTLs do not depend on which executor applies it.
    received_at_ms: u64,
    /// Who asked: the owner checks the write against this principal's ACL.
    principal: Arc<Principal>,
    reply: oneshot::Sender<WriteOutcome>,
}

pub struct Router {
    shard_id: usize,
    writer: RefCell<ShardWriter>,
    senders: Senders<WriteMessage>,
}

impl Router {
    pub fn new(writer: ShardWriter, senders: Senders<WriteMessage>) -> Router {
        Router { shard_id: writer.shard_id(), writer: RefCell::new(writer), senders }
    }

    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Applies a write to this executor's own shard and arranges for `reply` to receive its
    /// outcome: at once for a refused write, once its log batch is committed for an applied one.
    /// `acl` is the caller's: the writer checks the credential's owner and scope against it.
    pub fn write(&self, request: &Request<'_>, now_ms: u64, acl: &Acl, reply: oneshot::Sender<WriteOutcome>) {
        let mut writer = self.writer.borrow_mut();
        let outcome = match request {
            Request::Put(put) => writer.put(put, now_ms, acl),
            Request::Delete(delete) => writer.delete(delete, now_ms, acl),
            Request::Rotate(rotate) => writer.rotate(rotate, now_ms, acl),
            _ => Err(OpError::Internal("not a write")),
        };
        match (outcome, writer.log()) {
            (Ok(version), Some(log)) => log.when_committed(reply, Ok(version)),
            (outcome, _) => {
                let _ = reply.send(outcome);
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
        debug_assert_ne!(shard_id, self.shard_id);
        let (reply, outcome) = oneshot::channel();
        let body = Zeroizing::new(body.to_vec());
        let message = WriteMessage { op, body, received_at_ms, principal, reply };
        // If the peer executor is gone (shutting down), the message and its reply sender are
        // dropped, and the receiver reports the write as unavailable.
        let _ = self.senders.send_to(shard_id, message).await;
        outcome
    }

    /// Removes this shard's expired credentials every `interval`, forever (the task ends with
    /// the executor).
    pub fn spawn_sweeper(self: &Rc<Router>, interval: std::time::Duration, metrics: Arc<Metrics>) {
        let router = Rc::clone(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(interval).await;
                let swept = router.writer.borrow_mut().sweep_expired(crate::time::now_ms());
                ExecutorMetrics::add(&metrics.executor(router.shard_id).expired_swept, swept as u64);
            }
        })
        .detach();
    }

    /// Re-encrypts this shard's records that are on retiring data keys with the active key,
    /// at most `records_per_second` credentials a second, between the executor's other work;
    /// after a whole pass that finds none left, and once what it re-encrypted is on disk,
    /// reports the shard clear so the key ring can drop the retiring keys. A crash at any
    /// point leaves the keys in the ring and the work resumes after the restart.
    pub fn spawn_rewrapper(self: &Rc<Router>, records_per_second: u32, metrics: Arc<Metrics>) {
        let router = Rc::clone(self);
        let per_tick =
            (u64::from(records_per_second) * REWRAP_TICK.as_millis() as u64 / 1000).max(1) as usize;
        glommio::spawn_local(async move {
            let store = Arc::clone(router.writer.borrow().store());
            let keyring = store.keyring();
            let counters = metrics.executor(router.shard_id);
            loop {
                if !keyring.has_retiring() {
                    glommio::timer::sleep(REWRAP_IDLE_CHECK).await;
                    continue;
                }
                let epoch = keyring.rotation_epoch();
                let active_key_id = keyring.active_key_id();
                let candidates = router.writer.borrow().rewrap_candidates(active_key_id);
                if candidates.is_empty() {
                    let (reply, durable) = oneshot::channel();
                    match router.writer.borrow().log() {
                        Some(log) => log.when_durable(reply),
                        None => {
                            let _ = reply.send(Ok(0));
                        }
                    }
                    if let Ok(Ok(_)) = durable.await {
                        if let Err(error) = keyring.report_clear(router.shard_id, epoch, store.shard_count()) {
                            tracing::warn!(%error, "could not drop the retiring data keys; retrying");
                        }
                    }
                    // The other shards may still be working: look again in a while.
                    glommio::timer::sleep(REWRAP_IDLE_CHECK).await;
                    continue;
                }
                let mut failed = 0usize;
                for chunk in candidates.chunks(per_tick) {
                    if keyring.active_key_id() != active_key_id {
                        break; // rotated meanwhile: start a new pass for the new key
                    }
                    for id in chunk {
                        match router.writer.borrow_mut().rewrap(id) {
                            Ok(count) => ExecutorMetrics::add(&counters.records_rewrapped, count as u64),
                            Err(OpError::Unavailable(_)) => failed += 1,
                            Err(error) => {
                                failed += 1;
                                ExecutorMetrics::add(&counters.rewrap_failures, 1);
                                tracing::error!(id = &**id, %error, "a credential could not be re-encrypted; its data key stays in the ring");
                            }
                        }
                    }
                    glommio::timer::sleep(REWRAP_TICK).await;
                }
                if failed > 0 {
                    // A damaged record or a failing disk: do not rescan in a tight loop.
                    glommio::timer::sleep(REWRAP_RETRY_INTERVAL).await;
                }
            }
        })
        .detach();
    }

    /// Serves writes that other executors send to this shard, until they hang up.
    pub fn spawn_peer_tasks(
        self: &Rc<Router>,
        mut receivers: Receivers<WriteMessage>,
        limits: credshard_protocol::Limits,
    ) {
        for (_peer, receiver) in receivers.streams() {
            let router = Rc::clone(self);
            glommio::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
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
