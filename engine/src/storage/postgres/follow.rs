//! Following the change log in spite of sequence gaps.
//!
//! Sequence numbers are taken when a row is inserted, not when its transaction commits: a
//! writer that took 10 can commit after one that took 11. A follower that only asked for
//! "after the highest seen" would then never see 10. So the [`Follower`] remembers every
//! number it skipped over as a gap, asks again from the oldest open gap on each poll, and
//! delivers each change exactly once: when it first appears, whether that fills a gap or
//! extends the watermark. A gap that stays empty longer than [`GAP_PATIENCE`] is given up:
//! a rolled-back insert leaves such a hole for ever, and none of our transactions may run
//! that long (each holds at most [`TRANSACTION_STATEMENTS_MAX`] statements, each under the
//! statement timeout; the patience is twice that).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use deadpool_postgres::GenericClient;

use super::rows::{self, Change};
use super::{DbError, STATEMENT_TIMEOUT_MS, TRANSACTION_STATEMENTS_MAX};

/// How long a skipped sequence number is waited for: twice the longest one of our
/// transactions can take.
pub const GAP_PATIENCE: Duration =
    Duration::from_millis(2 * TRANSACTION_STATEMENTS_MAX * STATEMENT_TIMEOUT_MS);

/// Where a follower is in the change log.
#[derive(Debug)]
pub struct Follower {
    /// Every change up to here was delivered, or is a gap.
    watermark: i64,
    /// Skipped numbers not seen yet, with when they were first skipped.
    gaps: BTreeMap<i64, Instant>,
}

impl Follower {
    /// A follower that delivers the changes after `watermark`.
    pub fn after(watermark: i64) -> Follower {
        Follower { watermark, gaps: BTreeMap::new() }
    }

    /// The sequence number to read after: just below the oldest open gap, or the watermark.
    pub fn read_after(&self) -> i64 {
        self.gaps.keys().next().map_or(self.watermark, |&oldest| oldest - 1)
    }

    /// Open gaps (for STATS and tests).
    pub fn gaps(&self) -> usize {
        self.gaps.len()
    }

    /// Takes a page of changes read after [`Follower::read_after`] (in sequence order) and
    /// returns those not delivered before.
    pub fn accept(&mut self, page: Vec<Change>, now: Instant) -> Vec<Change> {
        let mut fresh = Vec::with_capacity(page.len());
        for change in page {
            if change.seq > self.watermark {
                for skipped in self.watermark + 1..change.seq {
                    self.gaps.insert(skipped, now);
                }
                self.watermark = change.seq;
                fresh.push(change);
            } else if self.gaps.remove(&change.seq).is_some() {
                fresh.push(change);
            }
        }
        self.gaps.retain(|_, skipped_at| now.duration_since(*skipped_at) < GAP_PATIENCE);
        fresh
    }

    /// Reads and accepts one page of at most `limit` changes.
    ///
    /// # Errors
    /// Database errors (the follower's position is unchanged).
    pub async fn poll(&mut self, client: &impl GenericClient, limit: i64) -> Result<Vec<Change>, DbError> {
        let page = rows::changes_after(client, self.read_after(), limit).await?;
        Ok(self.accept(page, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::postgres::rows::ChangeKind;

    fn change(seq: i64) -> Change {
        Change {
            seq,
            id: format!("id-{seq}"),
            version: 1,
            kind: ChangeKind::Written,
            change: 1,
            owner: String::new(),
            scope: String::new(),
            at_ms: 0,
        }
    }

    fn seqs(changes: &[Change]) -> Vec<i64> {
        changes.iter().map(|change| change.seq).collect()
    }

    #[test]
    fn a_late_commit_below_the_watermark_is_delivered_once() {
        let now = Instant::now();
        let mut follower = Follower::after(0);
        assert_eq!(seqs(&follower.accept(vec![change(1), change(3), change(4)], now)), [1, 3, 4]);
        assert_eq!((follower.read_after(), follower.gaps()), (1, 1), "2 is open: read from it again");
        // The next poll repeats 3 and 4 (already delivered) and brings 2 and 5.
        assert_eq!(seqs(&follower.accept(vec![change(2), change(3), change(4), change(5)], now)), [2, 5]);
        assert_eq!((follower.read_after(), follower.gaps()), (5, 0));
        assert!(follower.accept(vec![change(5)], now).is_empty(), "nothing twice");
    }

    #[test]
    fn a_gap_that_never_fills_is_given_up_after_its_patience() {
        let start = Instant::now();
        let mut follower = Follower::after(10);
        follower.accept(vec![change(12)], start);
        assert_eq!(follower.read_after(), 10);
        follower.accept(Vec::new(), start + GAP_PATIENCE / 2);
        assert_eq!(follower.gaps(), 1);
        follower.accept(Vec::new(), start + GAP_PATIENCE);
        assert_eq!((follower.gaps(), follower.read_after()), (0, 12));
    }
}
