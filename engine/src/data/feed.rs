//! A shard's change feed: its recent changes in commit order, for WATCH.
//!
//! The shard's writer appends one event per change as it applies it (so a shard's events are
//! in the order of its log, and a credential's in version order), and marks them committed
//! once its storage has committed them: watchers read only committed events, so nothing is
//! announced that a crash could take back. Events are kept encoded, as a watcher is sent
//! them (each is encoded once, however many watchers copy it), in a ring of the last
//! `capacity`; a watcher that falls further behind than that is told so.
//!
//! Sequence numbers start at 1 with each run of the server, which is why a position carries
//! the store's epoch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use credshard_protocol::op::watch::{Change, EventRef};

/// Events each shard keeps for watchers, unless configured otherwise.
pub const FEED_EVENTS_DEFAULT: usize = 65_536;

pub struct Feed {
    ring: Mutex<Ring>,
    /// Every event up to this sequence number is committed and may be read.
    committed: AtomicU64,
}

struct Ring {
    /// Encoded events; the first has sequence number `first_seq`.
    events: VecDeque<Box<[u8]>>,
    first_seq: u64,
    capacity: usize,
}

/// A watcher's position is older than the oldest event the feed still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lapped {
    /// Events the watcher missed.
    pub missed: u64,
}

impl Feed {
    /// A feed keeping the last `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Feed {
        Feed {
            ring: Mutex::new(Ring { events: VecDeque::new(), first_seq: 1, capacity: capacity.max(1) }),
            committed: AtomicU64::new(0),
        }
    }

    /// Appends one change of `id` (the shard's writer only) and returns its sequence number.
    /// It is not readable until [`Feed::mark_committed`] covers it.
    #[allow(clippy::too_many_arguments)] // the event's fields, each a plain value
    pub(crate) fn append(
        &self,
        shard: u16,
        change: Change,
        version: u64,
        at_ms: u64,
        id: &str,
        owner: &str,
        scope: &str,
    ) -> u64 {
        let mut ring = self.ring.lock().expect("feed lock");
        let seq = ring.first_seq + ring.events.len() as u64;
        let event = EventRef { shard, seq, change, version, at_ms, id, owner, scope };
        let mut encoded = Vec::with_capacity(2 + 8 + 1 + 8 + 8 + 6 + id.len() + owner.len() + scope.len());
        event.encode(&mut encoded);
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
            ring.first_seq += 1;
        }
        ring.events.push_back(encoded.into_boxed_slice());
        seq
    }

    /// The sequence number of the last event appended (0: none yet).
    pub(crate) fn appended(&self) -> u64 {
        let ring = self.ring.lock().expect("feed lock");
        ring.first_seq + ring.events.len() as u64 - 1
    }

    /// Makes every event up to `seq` readable.
    pub(crate) fn mark_committed(&self, seq: u64) {
        self.committed.fetch_max(seq, Ordering::Release);
    }

    /// Drops every event and skips one sequence number, so that every watcher is told it
    /// missed changes: the changes from here back to what it saw are not known one by one
    /// (a shared database's follower that read everything again after a long outage).
    pub(crate) fn lose_continuity(&self) {
        let mut ring = self.ring.lock().expect("feed lock");
        let next = ring.first_seq + ring.events.len() as u64;
        ring.events.clear();
        ring.first_seq = next + 1;
        self.committed.fetch_max(next, Ordering::Release);
    }

    /// The last readable sequence number (0: none yet).
    #[inline]
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Whether every event after `seq` is still held (a watcher at `seq` misses nothing).
    pub fn holds_after(&self, seq: u64) -> bool {
        let ring = self.ring.lock().expect("feed lock");
        seq >= ring.first_seq.saturating_sub(1) && seq <= self.committed()
    }

    /// Hands `each` the committed events after `after`, oldest first, at most `count_max`;
    /// returns the sequence number of the last one handed (`after` when none).
    ///
    /// # Errors
    /// [`Lapped`] when the feed no longer holds the event right after `after`.
    pub fn read_after(
        &self,
        after: u64,
        count_max: usize,
        mut each: impl FnMut(&[u8]),
    ) -> Result<u64, Lapped> {
        let committed = self.committed();
        if committed <= after {
            return Ok(after);
        }
        let ring = self.ring.lock().expect("feed lock");
        if after + 1 < ring.first_seq {
            return Err(Lapped { missed: ring.first_seq - after - 1 });
        }
        let from = (after + 1 - ring.first_seq) as usize;
        let to = ((committed + 1 - ring.first_seq) as usize)
            .min(ring.events.len())
            .min(from.saturating_add(count_max));
        for event in ring.events.range(from..to) {
            each(event);
        }
        Ok(ring.first_seq + to as u64 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credshard_protocol::wire::Reader;

    fn append(feed: &Feed, version: u64) -> u64 {
        feed.append(0, Change::Put, version, 1_000, "id", "owner", "scope")
    }

    fn read(feed: &Feed, after: u64) -> Result<(u64, Vec<u64>), Lapped> {
        let mut versions = Vec::new();
        let last = feed.read_after(after, usize::MAX, |bytes| {
            versions.push(EventRef::decode(&mut Reader::new(bytes)).unwrap().version);
        })?;
        Ok((last, versions))
    }

    #[test]
    fn only_committed_events_are_read_in_order_and_a_lapped_reader_is_told() {
        let feed = Feed::new(3);
        assert_eq!(feed.appended(), 0);
        assert_eq!((append(&feed, 10), append(&feed, 11)), (1, 2));
        assert_eq!(read(&feed, 0), Ok((0, vec![])), "nothing committed yet");
        feed.mark_committed(1);
        assert_eq!(read(&feed, 0), Ok((1, vec![10])));
        feed.mark_committed(2);
        assert_eq!(read(&feed, 1), Ok((2, vec![11])));
        assert_eq!(read(&feed, 2), Ok((2, vec![])));
        for version in 12..=14 {
            append(&feed, version);
        }
        feed.mark_committed(feed.appended());
        assert_eq!(feed.appended(), 5);
        // Holds 3, 4, 5: a reader at 1 missed event 2.
        assert_eq!(read(&feed, 1), Err(Lapped { missed: 1 }));
        assert!(!feed.holds_after(1) && feed.holds_after(2) && feed.holds_after(5) && !feed.holds_after(6));
        assert_eq!(read(&feed, 2), Ok((5, vec![12, 13, 14])));
        let mut first = Vec::new();
        assert_eq!(feed.read_after(2, 2, |bytes| first.push(bytes.len())), Ok(4), "at most count_max");
        assert_eq!(first.len(), 2);
    }
}
