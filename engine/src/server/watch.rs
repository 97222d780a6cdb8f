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
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::RawFd;
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
use credshard_protocol::{Op, Status};
use futures::future::{select, Either};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::auth::Session;
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

/// The kernel send buffer of a watching connection (the kernel doubles it for its own
/// bookkeeping): with the stream output above, what one watcher can hold of the server's
/// memory. A watcher whose client reads slower than changes come fills it and falls behind
/// instead of growing it to the system's maximum (4 MiB here, for each of a thousand
/// watchers).
pub const WATCH_SEND_BUFFER_BYTES: usize = 128 * 1024;

/// Sets a watching connection's kernel send buffer to [`WATCH_SEND_BUFFER_BYTES`]; a socket
/// that refuses keeps its own (the stream works either way).
pub fn limit_send_buffer(socket: RawFd) {
    let bytes = WATCH_SEND_BUFFER_BYTES as libc::c_int;
    // SAFETY: `socket` is the connection's open TCP socket for this whole call, and the option
    // value is a c_int of the length passed; setsockopt reads nothing else.
    let result = unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not limit a watcher's send buffer");
    }
}

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

/// Wakes an executor's watchers when changes they want are committed.
///
/// Every [`TICK`] the hub reads each shard's new committed events once and matches them
/// against its watchers' filters (ids and owners through maps, the other filters one by one):
/// a watcher something matched is woken and reads the events itself (checking its token's
/// reach); one nothing matched, and that had read everything before, is moved past them
/// without waking. So a thousand watchers of one credential each cost a map lookup per change,
/// not a thousand scans of every change.
#[derive(Default)]
pub struct WatchHub {
    slots: RefCell<Vec<Rc<Slot>>>,
    by_id: RefCell<HashMap<Box<str>, Vec<Rc<Slot>>>>,
    by_owner: RefCell<HashMap<Box<str>, Vec<Rc<Slot>>>>,
    /// Watchers of every change or of a scope prefix: matched one by one.
    others: RefCell<Vec<Rc<Slot>>>,
    ticking: Cell<bool>,
}

/// One watcher, as its hub sees it.
struct Slot {
    filter: OwnedFilter,
    /// Per shard, the last seq the watcher has read (or been moved past).
    positions: RefCell<Vec<u64>>,
    /// Something it wants was committed since it last read.
    due: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    fn wake(&self) {
        self.due.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// A watcher registered with its hub while it lives.
struct Registration<'a> {
    hub: &'a Rc<WatchHub>,
    slot: Rc<Slot>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let forget = |slots: &mut Vec<Rc<Slot>>| slots.retain(|slot| !Rc::ptr_eq(slot, &self.slot));
        forget(&mut self.hub.slots.borrow_mut());
        let keyed = match &self.slot.filter {
            OwnedFilter::Id(id) => Some((&self.hub.by_id, id)),
            OwnedFilter::Owner(owner) => Some((&self.hub.by_owner, owner)),
            _ => None,
        };
        match keyed {
            Some((index, key)) => {
                let mut index = index.borrow_mut();
                if let Some(slots) = index.get_mut(key.as_str()) {
                    forget(slots);
                    if slots.is_empty() {
                        index.remove(key.as_str());
                    }
                }
            }
            None => forget(&mut self.hub.others.borrow_mut()),
        }
    }
}

impl WatchHub {
    /// Registers a watcher reading from `positions`, and starts the hub's ticker if it is not
    /// running.
    fn register<'a>(
        self: &'a Rc<WatchHub>,
        store: &Arc<Store>,
        filter: OwnedFilter,
        positions: Vec<u64>,
    ) -> Registration<'a> {
        let slot = Rc::new(Slot {
            filter,
            positions: RefCell::new(positions),
            due: Cell::new(true),
            waker: RefCell::new(None),
        });
        self.slots.borrow_mut().push(Rc::clone(&slot));
        match &slot.filter {
            OwnedFilter::Id(id) => {
                self.by_id.borrow_mut().entry(id.as_str().into()).or_default().push(Rc::clone(&slot))
            }
            OwnedFilter::Owner(owner) => {
                self.by_owner.borrow_mut().entry(owner.as_str().into()).or_default().push(Rc::clone(&slot))
            }
            _ => self.others.borrow_mut().push(Rc::clone(&slot)),
        }
        if !self.ticking.replace(true) {
            let hub = Rc::clone(self);
            let store = Arc::clone(store);
            glommio::spawn_local(async move { hub.tick(store).await }).detach();
        }
        Registration { hub: self, slot }
    }

    /// Every [`TICK`] while watchers are registered: matches the changes committed since the
    /// last tick against the watchers' filters, wakes those they concern, and moves the others
    /// past them.
    async fn tick(&self, store: Arc<Store>) {
        let shard_count = store.shard_count();
        let mut scanned: Vec<u64> =
            (0..shard_count).map(|shard_id| store.shard(shard_id).feed.committed()).collect();
        while !self.slots.borrow().is_empty() {
            glommio::timer::sleep(TICK).await;
            let before = scanned.clone();
            let mut lapped = false;
            for (shard_id, position) in scanned.iter_mut().enumerate() {
                let feed = &store.shard(shard_id).feed;
                loop {
                    match feed.read_after(*position, EVENTS_PER_TURN, |bytes| self.route(bytes)) {
                        Ok(last) if last == *position => break,
                        Ok(last) => *position = last,
                        Err(_) => {
                            // The hub itself fell behind (it never should: it only reads):
                            // every watcher looks for itself.
                            lapped = true;
                            *position = feed.committed();
                            break;
                        }
                    }
                }
            }
            if scanned == before && !lapped {
                continue;
            }
            for slot in self.slots.borrow().iter() {
                if lapped {
                    slot.wake();
                    continue;
                }
                if slot.due.get() {
                    continue;
                }
                // Nothing it wants since `before`: on each shard it had read that far, it may
                // skip to here (the hub checked everything between against its filter).
                let mut positions = slot.positions.borrow_mut();
                for ((own, scanned_before), scanned_now) in positions.iter_mut().zip(&before).zip(&scanned) {
                    if *own >= *scanned_before {
                        *own = (*own).max(*scanned_now);
                    }
                }
            }
        }
        self.ticking.set(false);
    }

    /// Wakes the watchers whose filter the encoded event `bytes` passes.
    fn route(&self, bytes: &[u8]) {
        let event = EventRef::decode(&mut Reader::new(bytes)).expect("the feed holds valid events");
        if let Some(slots) = self.by_id.borrow().get(event.id) {
            slots.iter().for_each(|slot| slot.wake());
        }
        if let Some(slots) = self.by_owner.borrow().get(event.owner) {
            slots.iter().for_each(|slot| slot.wake());
        }
        for slot in self.others.borrow().iter() {
            if slot.filter.borrowed().passes(event.id, event.owner, event.scope) {
                slot.wake();
            }
        }
    }
}

/// Resolves once the watcher of `slot` is due to read.
struct Due<'a> {
    slot: &'a Slot,
}

impl Future for Due<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.slot.due.get() {
            return Poll::Ready(());
        }
        *self.slot.waker.borrow_mut() = Some(context.waker().clone());
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
    let positions: Vec<u64> = match resumable {
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
    let registration = context.watch_hub.register(store, spec.filter.clone(), positions);
    let slot = &registration.slot;
    let filter = spec.filter.borrowed();
    let mut discard = [0u8; 512];
    loop {
        // The token as it is now: a reload may have revoked or narrowed it since the last turn.
        let principal = match session.principal(&context.authenticator) {
            Some(principal) if principal.acl.allows_op(Op::Watch) => Arc::clone(principal),
            _ => {
                let message = "the token was revoked or no longer allows WATCH; the stream ends";
                encode_error(Status::Unauthorized, spec.request_id, 0, message, &mut output.bytes);
                output.flush(stream, None, metrics).await?;
                return linger(stream).await;
            }
        };
        // Send everything committed since the last turn.
        slot.due.set(false);
        for shard_id in 0..shard_count {
            let feed = &store.shard(shard_id).feed;
            loop {
                let position = slot.positions.borrow()[shard_id];
                let read = feed.read_after(position, EVENTS_PER_TURN, |bytes| {
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
                    Ok(last) if last == position => break,
                    Ok(last) => {
                        let mut positions = slot.positions.borrow_mut();
                        positions[shard_id] = positions[shard_id].max(last);
                    }
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
        // Wait for changes it wants, or for the client to close (anything it sends is
        // discarded: the connection is the stream's now).
        let read = stream.read(&mut discard);
        match select(pin!(Due { slot }), pin!(read)).await {
            Either::Left(((), _)) => {}
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
