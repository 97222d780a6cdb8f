//! WATCH: a connection that asks for changes becomes a stream of them.
//!
//! Watchers pull from the shards' change feeds (`data::feed`); nothing is pushed to them, so
//! a slow watcher never slows a writer: it falls behind, and once the feed no longer holds
//! the next event it owes, it is told so and the stream ends. Each executor with watchers runs
//! one hub that looks at every shard's committed position every [`TICK`] and wakes its
//! watchers when one moved; each then copies the new events that pass its filter and its
//! token's reach (encoded once by the writer) into frames, and sends them.
//!
//! Events become readable only when the shard's storage has committed them
//! ([`FeedListener`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BufMut;
use credshard_protocol::frame;
use credshard_protocol::op::encode_error;
use credshard_protocol::op::watch::{EventRef, WatchFilter, WatchReply, WatchRequest, STREAM_FLAG};
use credshard_protocol::wire::Reader;
use credshard_protocol::Status;
use futures::future::{select, Either};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::auth::{Principal, Session};
use crate::data::Store;
use crate::metrics::ExecutorMetrics;
use crate::server::connection::{linger, Output};
use crate::server::executor::ExecutorContext;
use crate::storage::CommitListener;

/// How often a hub looks for new committed changes: the most a change waits, after its
/// commit, before watchers are woken for it.
pub const TICK: Duration = Duration::from_millis(2);

/// Events one watcher takes from one shard before it sends what it has.
const EVENTS_PER_TURN: usize = 1024;

/// Unsent stream bytes above which a watcher sends before it takes more events.
const STREAM_OUTPUT_BYTES_MAX: usize = 256 * 1024;

/// A WATCH request, owned: the frame it came in is consumed before the stream starts.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub request_id: u32,
    filter: OwnedFilter,
    resume: Option<(u64, Vec<u64>)>,
}

#[derive(Clone, Debug)]
enum OwnedFilter {
    All,
    Id(String),
    Owner(String),
    ScopePrefix(String),
}

impl OwnedFilter {
    fn borrowed(&self) -> WatchFilter<'_> {
        match self {
            OwnedFilter::All => WatchFilter::All,
            OwnedFilter::Id(id) => WatchFilter::Id(id),
            OwnedFilter::Owner(owner) => WatchFilter::Owner(owner),
            OwnedFilter::ScopePrefix(prefix) => WatchFilter::ScopePrefix(prefix),
        }
    }
}

impl WatchSpec {
    pub fn new(request_id: u32, request: &WatchRequest<'_>) -> WatchSpec {
        let filter = match request.filter {
            WatchFilter::All => OwnedFilter::All,
            WatchFilter::Id(id) => OwnedFilter::Id(id.to_owned()),
            WatchFilter::Owner(owner) => OwnedFilter::Owner(owner.to_owned()),
            WatchFilter::ScopePrefix(prefix) => OwnedFilter::ScopePrefix(prefix.to_owned()),
        };
        WatchSpec { request_id, filter, resume: request.resume.clone() }
    }
}

/// Wakes an executor's watchers when a shard's committed position moves.
#[derive(Default)]
pub struct WatchHub {
    /// Bumped whenever some shard's committed position moved.
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
    watchers: Cell<usize>,
    ticking: Cell<bool>,
}

/// A watcher counted by its hub while it lives.
struct Registration<'a>(&'a Rc<WatchHub>);

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.0.watchers.set(self.0.watchers.get() - 1);
    }
}

impl WatchHub {
    /// Counts a watcher, and starts the hub's ticker if it is not running.
    fn register<'a>(self: &'a Rc<WatchHub>, store: &Arc<Store>) -> Registration<'a> {
        self.watchers.set(self.watchers.get() + 1);
        if !self.ticking.replace(true) {
            let hub = Rc::clone(self);
            let store = Arc::clone(store);
            glommio::spawn_local(async move { hub.tick(store).await }).detach();
        }
        Registration(self)
    }

    /// Every [`TICK`] while watchers are registered: wakes them if a shard's committed
    /// position moved.
    async fn tick(&self, store: Arc<Store>) {
        let committed = || (0..store.shard_count()).map(|shard_id| store.shard(shard_id).feed.committed());
        let mut seen: Vec<u64> = committed().collect();
        while self.watchers.get() > 0 {
            glommio::timer::sleep(TICK).await;
            if committed().ne(seen.iter().copied()) {
                seen = committed().collect();
                self.generation.set(self.generation.get() + 1);
                for waker in self.wakers.borrow_mut().drain(..) {
                    waker.wake();
                }
            }
        }
        self.ticking.set(false);
    }

    /// Resolves once the generation is past `seen`, with the new generation.
    fn moved_past(&self, seen: u64) -> MovedPast<'_> {
        MovedPast { hub: self, seen }
    }
}

struct MovedPast<'a> {
    hub: &'a WatchHub,
    seen: u64,
}

impl Future for MovedPast<'_> {
    type Output = u64;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<u64> {
        let generation = self.hub.generation.get();
        if generation > self.seen {
            return Poll::Ready(generation);
        }
        self.hub.wakers.borrow_mut().push(context.waker().clone());
        Poll::Pending
    }
}

/// Makes a shard's feed follow its storage's commits: the events appended before a commit
/// took its entries become readable when it succeeds, before any of its writes is answered (so
/// a change is never announced before it is durable, nor after its writer heard back).
pub struct FeedListener {
    store: Arc<Store>,
    shard_id: usize,
}

impl FeedListener {
    pub fn new(store: Arc<Store>, shard_id: usize) -> FeedListener {
        FeedListener { store, shard_id }
    }
}

impl CommitListener for FeedListener {
    fn taken(&self) -> u64 {
        self.store.shard(self.shard_id).feed.appended()
    }

    fn committed(&self, mark: u64) {
        self.store.shard(self.shard_id).feed.mark_committed(mark);
    }
}

/// Answers `spec` on `stream` and then streams the changes it asks for until the client
/// closes, the watcher falls behind, or its token is revoked. `output` holds anything the
/// connection still had to send.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    context: &Rc<ExecutorContext>,
    session: &mut Session,
    principal: Arc<Principal>,
    spec: WatchSpec,
    stream: &mut S,
    output: &mut Output,
) -> std::io::Result<()> {
    let store = &context.store;
    let shard_count = store.shard_count();
    let metrics = context.metrics();
    let resumable = spec.resume.as_ref().filter(|(epoch, seqs)| {
        *epoch == store.epoch()
            && seqs.len() == shard_count
            && seqs.iter().enumerate().all(|(shard_id, &seq)| store.shard(shard_id).feed.holds_after(seq))
    });
    let mut positions: Vec<u64> = match resumable {
        Some((_, seqs)) => seqs.clone(),
        None => (0..shard_count).map(|shard_id| store.shard(shard_id).feed.committed()).collect(),
    };
    let reply = WatchReply { epoch: store.epoch(), resumed: resumable.is_some(), start: positions.clone() };
    let start = frame::begin(&mut output.bytes, Status::Ok as u8, spec.request_id);
    reply.encode(&mut output.bytes);
    frame::finish(&mut output.bytes, start);
    ExecutorMetrics::add(&metrics.watchers_total, 1);
    ExecutorMetrics::add(&metrics.watchers_open, 1);
    let _open = OpenWatcher(metrics);
    let hub = &context.watch_hub;
    let _registration = hub.register(store);
    let filter = spec.filter.borrowed();
    let mut generation = hub.generation.get();
    let mut discard = [0u8; 512];
    loop {
        // Send everything committed since the last turn.
        for (shard_id, position) in positions.iter_mut().enumerate() {
            let feed = &store.shard(shard_id).feed;
            loop {
                let read = feed.read_after(*position, EVENTS_PER_TURN, |bytes| {
                    let event =
                        EventRef::decode(&mut Reader::new(bytes)).expect("the feed holds valid events");
                    if filter.passes(event.id, event.owner, event.scope)
                        && principal.acl.covers(event.owner, event.scope)
                    {
                        let start = frame::begin(&mut output.bytes, Status::Ok as u8, spec.request_id);
                        output.bytes[start + frame::LENGTH_BYTES + 1] = STREAM_FLAG;
                        output.bytes.put_slice(bytes);
                        frame::finish(&mut output.bytes, start);
                        ExecutorMetrics::add(&metrics.watch_events_sent, 1);
                    }
                });
                match read {
                    Ok(last) if last == *position => break,
                    Ok(last) => *position = last,
                    Err(lapped) => {
                        ExecutorMetrics::add(&metrics.watchers_behind, 1);
                        let message = format!(
                            "the watcher fell behind: {} changes of shard {shard_id} are no longer held; \
                             read the state again and WATCH anew",
                            lapped.missed
                        );
                        encode_error(Status::Unavailable, spec.request_id, 0, &message, &mut output.bytes);
                        output.flush(stream, None, metrics).await?;
                        return linger(stream).await;
                    }
                }
                if output.bytes.len() > STREAM_OUTPUT_BYTES_MAX {
                    output.flush(stream, None, metrics).await?;
                }
            }
        }
        output.flush(stream, None, metrics).await?;
        if session.principal(&context.authenticator).is_none() {
            let message = "the token was revoked; the stream ends";
            encode_error(Status::Unauthorized, spec.request_id, 0, message, &mut output.bytes);
            output.flush(stream, None, metrics).await?;
            return linger(stream).await;
        }
        // Wait for new changes, or for the client to close (anything it sends is discarded:
        // the connection is the stream's now).
        let moved = hub.moved_past(generation);
        let read = stream.read(&mut discard);
        match select(pin!(moved), pin!(read)).await {
            Either::Left((now, _)) => generation = now,
            Either::Right((Ok(0), _)) => return Ok(()),
            Either::Right((Ok(_), _)) => {}
            // A watcher may stay silent for as long as it likes: the idle timeout is not for it.
            Either::Right((Err(error), _)) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Either::Right((Err(error), _)) => return Err(error),
        }
    }
}

/// Counts a watcher open while it lives.
struct OpenWatcher<'a>(&'a ExecutorMetrics);

impl Drop for OpenWatcher<'_> {
    fn drop(&mut self) {
        ExecutorMetrics::sub(&self.0.watchers_open, 1);
    }
}
