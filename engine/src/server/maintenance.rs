//! A shard's background work, on its executor between requests: the expiry sweeper, and the
//! re-encryption of records on retiring data keys after a data-key rotation. Both act through
//! the shard's writer (`Router::with_writer`), so they are ordered with the shard's writes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;

use crate::error::OpError;
use crate::metrics::{ExecutorMetrics, Metrics};
use crate::server::router::Router;

/// How often the re-encryption of retiring data keys takes its next slice of credentials.
const REWRAP_TICK: Duration = Duration::from_millis(10);
/// How often a shard with nothing to re-encrypt checks again.
const REWRAP_IDLE_CHECK: Duration = Duration::from_millis(200);
/// The pause after a pass in which some credentials could not be re-encrypted.
const REWRAP_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Removes this shard's expired credentials every `interval`, forever (the task ends with
/// the executor).
pub fn spawn_sweeper(router: &Rc<Router>, interval: Duration, metrics: Arc<Metrics>) {
    let router = Rc::clone(router);
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            let swept = router.with_writer(|writer| writer.sweep_expired(crate::time::now_ms()));
            ExecutorMetrics::add(&metrics.executor(router.shard_id()).expired_swept, swept as u64);
        }
    })
    .detach();
}

/// Re-encrypts this shard's records that are on retiring data keys with the active key,
/// at most `records_per_second` credentials a second, between the executor's other work;
/// after a whole pass that finds none left, and once what it re-encrypted is on disk,
/// reports the shard clear so the key ring can drop the retiring keys. A crash at any
/// point leaves the keys in the ring and the work resumes after the restart.
pub fn spawn_rewrapper(router: &Rc<Router>, records_per_second: u32, metrics: Arc<Metrics>) {
    let router = Rc::clone(router);
    let per_tick = (u64::from(records_per_second) * REWRAP_TICK.as_millis() as u64 / 1000).max(1) as usize;
    glommio::spawn_local(async move {
        let store = router.with_writer(|writer| Arc::clone(writer.store()));
        let keyring = store.keyring();
        let counters = metrics.executor(router.shard_id());
        loop {
            if !keyring.has_retiring() {
                glommio::timer::sleep(REWRAP_IDLE_CHECK).await;
                continue;
            }
            let epoch = keyring.rotation_epoch();
            let active_key_id = keyring.active_key_id();
            let candidates = router.with_writer(|writer| writer.rewrap_candidates(active_key_id));
            if candidates.is_empty() {
                let (reply, durable) = oneshot::channel();
                router.with_writer(|writer| writer.when_durable(reply));
                if let Ok(Ok(_)) = durable.await {
                    if let Err(error) = keyring.report_clear(router.shard_id(), epoch, store.shard_count()) {
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
                    match router.with_writer(|writer| writer.rewrap(id)) {
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
