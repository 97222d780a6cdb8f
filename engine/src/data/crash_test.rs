//! Crashes of the real shard log on a simulated disk that keeps only what was made durable.
//!
//! A process kill leaves the page cache intact, so it cannot test the order of fsyncs. Here
//! the log (`storage::log::ShardLog`, unchanged) runs on [`SimDisk`], which remembers for
//! every file what was fdatasync'ed and for every directory which entries were synced. At a
//! random file operation the disk "loses power": the crash image keeps the durable state plus
//! a random part of the rest (a prefix of the unsynced writes with the last one torn at a
//! sector, or any subset of whole writes; a prefix of the unsynced directory changes). The
//! image is written to a real directory and recovered by the real recovery; every write
//! acknowledged before the crash must be there.
//!
//! The checker is checked too: on a disk whose fdatasync (or directory sync) does nothing,
//! as if the log forgot to call it, some crash must lose an acknowledged write.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use credshard_protocol::op::get::GetRequest;
use credshard_protocol::{Expiry, Kind, Labels, Limits, PutRequest, EMPTY_LABELS};
use futures::channel::oneshot;

use super::{Lifecycle, Store, Write};
use crate::auth::Acl;
use crate::crypto::{KeySource, Keyring, MasterKey};
use crate::metrics::Metrics;
use crate::storage::log::{LogFile, LogFs, LogPlace, LogSettings, ShardLog};
use crate::storage::recovery;
use crate::storage::{FsyncMode, ShardStorage, Shards};

const SECTOR_BYTES: usize = 512;
const WRITES: usize = 300;
const IDS: usize = 12;
const IMAGES_PER_CRASH: usize = 3;

/// A small deterministic generator (splitmix64).
#[derive(Default)]
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

/// How the simulated disk misbehaves beyond losing what was not synced.
#[derive(Clone, Copy, Debug, Default)]
struct Lies {
    /// fdatasync returns success and makes nothing durable.
    fdatasync: bool,
    /// A directory sync returns success and makes no entry durable.
    directory_sync: bool,
}

#[derive(Debug)]
enum Unsynced {
    Write { offset: usize, bytes: Vec<u8> },
    Truncate,
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Unsynced>,
}

#[derive(Clone, Debug)]
enum DirectoryChange {
    Link(PathBuf, usize),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf, usize),
}

impl DirectoryChange {
    fn directory(&self) -> &Path {
        match self {
            DirectoryChange::Link(path, _)
            | DirectoryChange::Unlink(path)
            | DirectoryChange::Rename(_, path, _) => path.parent().expect("a file in a directory"),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) {
        match self {
            DirectoryChange::Link(path, inode) => {
                names.insert(path.clone(), *inode);
            }
            DirectoryChange::Unlink(path) => {
                names.remove(path);
            }
            DirectoryChange::Rename(from, to, inode) => {
                names.remove(from);
                names.insert(to.clone(), *inode);
            }
        }
    }
}

#[derive(Default)]
struct DiskState {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    unsynced_changes: Vec<DirectoryChange>,
    lies: Lies,
    /// File operations so far; the crash happens at operation `crash_at`.
    operations: usize,
    crash_at: usize,
    random: Option<Random>,
    /// How long each disk operation takes, in scheduler turns (varied, so that the log's
    /// tasks interleave differently from seed to seed).
    latency: Random,
    /// The crash image (path to contents), once taken.
    image: Option<BTreeMap<PathBuf, Vec<u8>>>,
    /// Acknowledged writes (id, version, secret seed) at the moment of the crash.
    acked_at_crash: Option<Vec<(String, u64, usize)>>,
}

/// A simulated disk shared by the log and the test.
#[derive(Clone)]
struct SimDisk {
    state: Rc<RefCell<DiskState>>,
    acked: Rc<RefCell<Vec<(String, u64, usize)>>>,
}

impl SimDisk {
    /// A disk holding every file under `root` as durable.
    fn holding(root: &Path, lies: Lies, crash_at: usize, seed: u64) -> SimDisk {
        let mut state = DiskState {
            lies,
            crash_at,
            random: Some(Random(seed)),
            latency: Random(seed ^ 0x5EED),
            ..DiskState::default()
        };
        let mut pending = vec![root.to_path_buf()];
        while let Some(directory) = pending.pop() {
            for entry in std::fs::read_dir(&directory).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let data = std::fs::read(&path).unwrap();
                    state.inodes.push(Inode { durable: data.clone(), data, unsynced: Vec::new() });
                    state.names.insert(path.clone(), state.inodes.len() - 1);
                    state.durable_names.insert(path, state.inodes.len() - 1);
                }
            }
        }
        SimDisk { state: Rc::new(RefCell::new(state)), acked: Rc::default() }
    }

    /// Waits as long as one disk operation takes.
    async fn latency(&self) {
        let turns = 1 + self.state.borrow_mut().latency.below(6);
        for _ in 0..turns {
            YieldNow(false).await;
        }
    }

    fn crashed(&self) -> bool {
        self.state.borrow().image.is_some()
    }

    /// Counts one file operation; at the chosen one, takes the crash image (before the
    /// operation takes effect).
    fn operation(&self) {
        let mut state = self.state.borrow_mut();
        state.operations += 1;
        if state.operations == state.crash_at && state.image.is_none() {
            let image = state.crash_image();
            state.image = Some(image);
            state.acked_at_crash = Some(self.acked.borrow().clone());
        }
    }
}

impl DiskState {
    fn crash_image(&mut self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut random = self.random.take().expect("one crash");
        let mut names = self.durable_names.clone();
        let kept_changes = random.below(self.unsynced_changes.len() + 1);
        for change in &self.unsynced_changes[..kept_changes] {
            change.apply(&mut names);
        }
        let subset = random.below(2) == 0;
        let image = names
            .iter()
            .map(|(path, &inode)| {
                let inode = &self.inodes[inode];
                let mut data = inode.durable.clone();
                let kept = random.below(inode.unsynced.len() + 1);
                for (index, change) in inode.unsynced.iter().enumerate() {
                    let last = index + 1 == kept;
                    let applied = if subset { random.below(2) == 0 } else { index < kept };
                    if !applied {
                        continue;
                    }
                    match change {
                        Unsynced::Truncate => data.clear(),
                        Unsynced::Write { offset, bytes } => {
                            // The last write of a prefix may be torn at a sector boundary.
                            let length = if !subset && last && random.below(2) == 0 {
                                (random.below(bytes.len() / SECTOR_BYTES + 1) * SECTOR_BYTES).min(bytes.len())
                            } else {
                                bytes.len()
                            };
                            if data.len() < offset + length {
                                data.resize(offset + length, 0);
                            }
                            data[*offset..offset + length].copy_from_slice(&bytes[..length]);
                        }
                    }
                }
                (path.clone(), data)
            })
            .collect();
        self.random = Some(random);
        image
    }
}

/// Lets other tasks run (a disk operation takes time).
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        context.waker().wake_by_ref();
        Poll::Pending
    }
}

struct SimFile {
    disk: SimDisk,
    inode: usize,
}

impl LogFile for SimFile {
    async fn size(&self) -> std::io::Result<u64> {
        Ok(self.disk.state.borrow().inodes[self.inode].data.len() as u64)
    }

    async fn write_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<usize> {
        self.disk.operation();
        self.disk.latency().await;
        let mut state = self.disk.state.borrow_mut();
        let inode = &mut state.inodes[self.inode];
        let offset = offset as usize;
        if inode.data.len() < offset + bytes.len() {
            inode.data.resize(offset + bytes.len(), 0);
        }
        inode.data[offset..offset + bytes.len()].copy_from_slice(bytes);
        let written = bytes.len();
        inode.unsynced.push(Unsynced::Write { offset, bytes: bytes.to_vec() });
        Ok(written)
    }

    async fn fdatasync(&self) -> std::io::Result<()> {
        self.disk.operation();
        self.disk.latency().await;
        let mut state = self.disk.state.borrow_mut();
        if !state.lies.fdatasync {
            let inode = &mut state.inodes[self.inode];
            inode.durable = inode.data.clone();
            inode.unsynced.clear();
        }
        Ok(())
    }

    async fn close(self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogFs for SimDisk {
    type File = SimFile;

    async fn open(&self, path: &Path, truncate: bool) -> std::io::Result<SimFile> {
        self.operation();
        let mut state = self.state.borrow_mut();
        let inode = match state.names.get(path) {
            Some(&inode) => {
                if truncate {
                    state.inodes[inode].data.clear();
                    state.inodes[inode].unsynced.push(Unsynced::Truncate);
                }
                inode
            }
            None => {
                state.inodes.push(Inode::default());
                let inode = state.inodes.len() - 1;
                state.names.insert(path.to_path_buf(), inode);
                state.unsynced_changes.push(DirectoryChange::Link(path.to_path_buf(), inode));
                inode
            }
        };
        Ok(SimFile { disk: self.clone(), inode })
    }

    async fn sync_directory(&self, directory: &Path) -> std::io::Result<()> {
        self.operation();
        self.latency().await;
        let mut state = self.state.borrow_mut();
        if state.lies.directory_sync {
            return Ok(());
        }
        let (synced, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.unsynced_changes)
            .into_iter()
            .partition(|change| change.directory() == directory);
        for change in &synced {
            change.apply(&mut state.durable_names);
        }
        state.unsynced_changes = kept;
        Ok(())
    }

    async fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.operation();
        self.latency().await;
        let mut state = self.state.borrow_mut();
        let inode = state.names.remove(from).ok_or(std::io::ErrorKind::NotFound)?;
        state.names.insert(to.to_path_buf(), inode);
        state.unsynced_changes.push(DirectoryChange::Rename(from.to_path_buf(), to.to_path_buf(), inode));
        Ok(())
    }

    async fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.operation();
        self.latency().await;
        let mut state = self.state.borrow_mut();
        state.names.remove(path).ok_or(std::io::ErrorKind::NotFound)?;
        state.unsynced_changes.push(DirectoryChange::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn list(&self, directory: &Path) -> std::io::Result<Vec<PathBuf>> {
        let state = self.state.borrow();
        Ok(state.names.keys().filter(|path| path.parent() == Some(directory)).cloned().collect())
    }
}

fn secret(seed: usize) -> Vec<u8> {
    format!("secret-{seed:04}-").repeat(12).into_bytes()
}

fn store(data_dir: &Path) -> Store {
    let keyring = Keyring::open(data_dir, KeySource::KeyFile(data_dir.join("master.key"))).expect("key ring");
    Store::new(1, keyring, Limits::default(), Lifecycle::default())
}

/// One crash: runs the workload on a simulated copy of `data_dir` (prepared by [`prepare`]),
/// crashes at operation `crash_at`, recovers the image, and returns the acknowledged writes
/// that recovery lost (empty when none was lost; `None` when the crash came after the end).
fn crash_once(data_dir: &Path, lies: Lies, crash_at: usize, seed: u64) -> Option<Vec<String>> {
    let disk_root = data_dir.to_path_buf();
    let (image, acked) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let disk = SimDisk::holding(&disk_root, lies, crash_at, seed);
            let store = Arc::new(store(&disk_root));
            let (manifest, segments, _) = recovery::recover(&disk_root, &*store).expect("recover the start");
            let place =
                LogPlace { data_dir: disk_root.clone(), manifest, shard_id: 0, segment: segments[0].clone() };
            // Small segments: segment switches and snapshots happen throughout the run.
            let settings = LogSettings {
                fsync: FsyncMode::Always,
                compact_log_bytes: 3_000,
                compact_past_snapshot: false,
            };
            let log = ShardLog::open_on(
                disk.clone(),
                place,
                settings,
                Arc::clone(&store) as Arc<dyn Shards>,
                Arc::new(Metrics::new(1)),
            )
            .await
            .expect("open the log");
            let mut writer = store.claim_writer(0);
            writer.attach_log(log as Rc<dyn ShardStorage>);
            let outstanding = Rc::new(Cell::new(0usize));
            for index in 0..WRITES {
                if disk.crashed() {
                    break;
                }
                let id = format!("id-{:02}", index % IDS);
                let secret = secret(index);
                let request = PutRequest {
                    id: &id,
                    owner: "owner",
                    scope: "scope",
                    kind: Kind::Password,
                    expected_version: None,
                    expiry: Expiry::Never,
                    labels: Labels::from_validated(EMPTY_LABELS),
                    secret: &secret,
                };
                let (reply, outcome) = oneshot::channel();
                writer.submit(Write::Put(&request), 1_000, &Acl::everything(), reply);
                let acked = Rc::clone(&disk.acked);
                let counter = Rc::clone(&outstanding);
                counter.set(counter.get() + 1);
                glommio::spawn_local(async move {
                    if let Ok(Ok(version)) = outcome.await {
                        acked.borrow_mut().push((id, version, index));
                    }
                    counter.set(counter.get() - 1);
                })
                .detach();
                // A few writes at a time, so that batches hold several.
                if index % 3 == 2 {
                    YieldNow(false).await;
                }
            }
            while outstanding.get() > 0 && !disk.crashed() {
                YieldNow(false).await;
            }
            let mut state = disk.state.borrow_mut();
            (state.image.take(), state.acked_at_crash.take())
        })
        .expect("executor starts")
        .join()
        .expect("executor finishes");
    let (image, acked) = (image?, acked.expect("taken with the image"));

    // Write the image out for real, and recover it.
    let recovered_dir = tempfile::tempdir().unwrap();
    let root = recovered_dir.path();
    for name in ["master.key", "keyring"] {
        std::fs::copy(data_dir.join(name), root.join(name)).unwrap();
    }
    for (path, bytes) in &image {
        let relative = path.strip_prefix(data_dir).unwrap();
        if relative == Path::new("master.key") || relative == Path::new("keyring") {
            continue;
        }
        let target = root.join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, bytes).unwrap();
    }
    let recovered = store(root);
    if let Err(error) = recovery::recover(root, &recovered) {
        return Some(vec![format!("recovery failed: {error}")]);
    }
    let mut latest: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    for (id, version, index) in acked {
        let entry = latest.entry(id).or_insert((version, index));
        if version > entry.0 {
            *entry = (version, index);
        }
    }
    let mut lost = Vec::new();
    for (id, (version, index)) in latest {
        let mut out = BytesMut::new();
        match recovered.get(&GetRequest::new(&id, 0), 1_000, &Acl::everything(), &mut out) {
            Ok(current) if current > version => {}
            Ok(current) if current == version && out.ends_with(&secret(index)) => {}
            outcome => lost.push(format!("{id} version {version} acknowledged, recovered {outcome:?}")),
        }
    }
    Some(lost)
}

/// A data dir with a manifest, empty logs and a key ring, as a first start leaves it.
fn prepare() -> tempfile::TempDir {
    let data_dir = tempfile::tempdir().unwrap();
    MasterKey::generate().write_file(&data_dir.path().join("master.key")).unwrap();
    recovery::recover(data_dir.path(), &store(data_dir.path())).unwrap();
    data_dir
}

/// Crashes at every `step`-th operation from 1 on, until a crash comes after the workload's
/// end; returns the failures.
fn crash_everywhere(lies: Lies, step: usize) -> Vec<String> {
    let data_dir = prepare();
    let mut failures = Vec::new();
    let mut crash_at = 1;
    'points: loop {
        // Several images of each crash point: each keeps a different part of what was not
        // synced.
        for image in 0..IMAGES_PER_CRASH {
            let seed = (crash_at * IMAGES_PER_CRASH + image) as u64;
            let Some(lost) = crash_once(data_dir.path(), lies, crash_at, seed) else { break 'points };
            failures.extend(
                lost.into_iter().map(|lost| format!("crash at operation {crash_at} ({seed}): {lost}")),
            );
        }
        crash_at += step;
    }
    assert!(crash_at > 60, "the workload made too few file operations to crash in ({crash_at})");
    failures
}

#[test]
fn no_acknowledged_write_is_lost_whatever_the_crash_keeps() {
    let failures = crash_everywhere(Lies::default(), 1);
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
}

#[test]
fn a_log_that_skipped_fdatasync_would_be_caught() {
    let failures = crash_everywhere(Lies { fdatasync: true, ..Lies::default() }, 5);
    assert!(!failures.is_empty(), "no crash lost an acknowledged write on a disk that never syncs");
}

#[test]
fn a_log_that_skipped_the_directory_sync_would_be_caught() {
    let failures = crash_everywhere(Lies { directory_sync: true, ..Lies::default() }, 5);
    assert!(
        !failures.is_empty(),
        "no crash lost an acknowledged write on a disk that never syncs directories"
    );
}
