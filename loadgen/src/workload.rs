//! The load itself. `--threads` client threads, each a single-threaded tokio runtime that owns
//! its share of the connections; one task per connection, which owns its socket and keeps
//! `pipeline` requests in flight on it:
//!
//! - the requests it sends together are encoded into one reused buffer and go out in one
//!   write; the replies of one read are parsed in place and judged (every read is validated
//!   against [`crate::value`]), and the requests that replace them go out together again;
//! - each thread records into its own [`Recorder`] (no lock, no atomics) and sends a copy of
//!   the last second to the reporting thread once a second, and the whole at the end.
//!
//! Phases: connect (and HELLO) on every thread, preload every key once (with a progress bar on
//! a terminal), then warm-up and the measured window, then up to [`GRACE_PERIOD_SECONDS`] for
//! the requests still in flight.
//!
//! Without `--rate` a connection is a closed loop: a request is sent as soon as a slot of its
//! pipeline is free, and latency runs from the send. With `--rate` each connection follows a
//! fixed [`Schedule`] (the rate divided over the connections), at most `pipeline` requests in
//! flight, and latency runs from each request's intended send time, so a slow reply that
//! delays the requests behind it is charged to them too (no coordinated omission). Sends are
//! timed by a tokio timer to within [`SPIN_WITHIN`] and by spinning for the last stretch, and
//! how late each was sent is reported, so a late client is never mistaken for a slow server.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use credshard_protocol::Status;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;

use crate::codec::{self, Access, Answer, Asked, Codec, Failure, Protocol, ServerInfo};
use crate::connection::{self, Stream};
use crate::distribution::{Distribution, KeyChooser, Random};
use crate::mix::{Mix, Op};
use crate::report::{self, Recorder, Summary};
use crate::target::Target;

/// How long the preload waits for a reply before it gives up on a connection.
pub const PRELOAD_REQUEST_TIMEOUT_SECONDS: u64 = 10;
/// How long requests still in flight at the end of the run are waited for before they are
/// abandoned (and counted), so a stalled server cannot hang the loadgen.
pub const GRACE_PERIOD_SECONDS: u64 = 5;
/// Time between progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Open loop: a send due sooner than this is waited for by spinning (yielding to the other
/// connections of the thread), since a tokio timer fires up to a millisecond late.
pub const SPIN_WITHIN: Duration = Duration::from_micros(1500);
/// Free bytes the read buffer has before each read.
const READ_SPARE_BYTES: usize = 64 << 10;
/// From the start command to the run's start, so that every thread starts at the same time.
const START_DELAY: Duration = Duration::from_millis(20);
/// How often the preload's progress bar is redrawn.
const PRELOAD_BAR_EVERY: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub pipeline: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub keys: u64,
    pub value_size: usize,
    pub mix: Mix,
    /// Which keys the requests use.
    pub distribution: Distribution,
    /// Total target ops/s over every connection (open loop), or `None` for a closed loop.
    pub rate: Option<f64>,
    /// Print a progress line each second, and the preload's progress bar (on stderr).
    pub progress: bool,
}

/// Where to run a [`Plan`], and how.
#[derive(Clone, Debug)]
pub struct Setup {
    pub target: Target,
    pub access: Access,
    pub connections: usize,
    /// Client threads (at most one per connection).
    pub threads: usize,
    /// Write every key once before the run.
    pub preload: bool,
    pub plan: Plan,
}

/// What a run measured.
pub struct Outcome {
    /// The first server's HELLO (for redis: INFO).
    pub server: ServerInfo,
    pub summary: Summary,
}

/// Why a run did not happen.
#[derive(Debug)]
pub enum Failed {
    /// A connection or its HELLO failed.
    Connect(String),
    /// A preload PUT failed: measuring reads of missing keys would mislead.
    Preload(String),
    /// A client thread could not start or stopped unexpectedly.
    Thread(String),
}

/// The outcome kind of a NOT_FOUND when the mix deletes keys: not an error.
pub const NOT_FOUND_AFTER_DELETE: &str = "not_found_after_delete";

/// From the reporting thread to the client threads.
enum Command {
    Preload,
    Run { start: Instant },
    Stop,
}

/// From the client threads to the reporting thread.
enum Event {
    Connected(Result<ServerInfo, String>),
    /// PUTs that failed, and the first failure.
    Preloaded {
        failed: u64,
        first: Option<String>,
    },
    /// The replies of the second that ended at `start + index` seconds, and the errors so far.
    Tick {
        index: u32,
        interval: Histogram<u64>,
        errors_total: u64,
    },
    Finished(Box<ThreadOutcome>),
}

struct ThreadOutcome {
    recorder: Recorder,
    connections_lost: usize,
    requests_abandoned: u64,
}

/// The preload's progress bar: on stderr when `plan.progress` is set, and then only if stderr
/// is a terminal ([`ProgressDrawTarget::stderr`] hides itself otherwise). Cleared when it is
/// finished or dropped, so the summary line printed after the preload stands alone.
fn preload_bar(plan: &Plan) -> ProgressBar {
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "preload {wide_bar} {human_pos}/{human_len} keys, {per_sec:0}, ETA {eta}",
    )
    .expect("the preload bar's template is valid");
    ProgressBar::with_draw_target(Some(plan.keys), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_finish(ProgressFinish::AndClear)
}

/// Connects, preloads (if `setup.preload`), runs the plan and gathers what it measured.
///
/// # Errors
/// [`Failed`] when the run could not be measured at all.
pub fn execute(setup: Setup) -> Result<Outcome, Failed> {
    let threads = setup.threads.clamp(1, setup.connections.max(1));
    let setup = Arc::new(setup);
    let preloaded = Arc::new(AtomicU64::new(0));
    let (events_to_report, events) = mpsc::channel();
    let mut commands = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for thread in 0..threads {
        let (command_sender, command_receiver) = mpsc::channel();
        let (setup, events, preloaded) = (setup.clone(), events_to_report.clone(), preloaded.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("loadgen-{thread}"))
            .spawn(move || client_thread(thread, threads, &setup, &command_receiver, &events, &preloaded));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                // The threads already started stop when their command channel closes.
                return Err(Failed::Thread(format!("cannot start a client thread: {error}")));
            }
        }
        commands.push(command_sender);
    }
    drop(events_to_report);
    let outcome = conduct(&setup, threads, &commands, &events, &preloaded);
    for command in &commands {
        let _ = command.send(Command::Stop);
    }
    for handle in handles {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
    outcome
}

fn thread_stopped() -> Failed {
    Failed::Thread("a client thread stopped unexpectedly".to_owned())
}

/// The reporting thread's side of [`execute`].
fn conduct(
    setup: &Setup,
    threads: usize,
    commands: &[mpsc::Sender<Command>],
    events: &mpsc::Receiver<Event>,
    preloaded: &AtomicU64,
) -> Result<Outcome, Failed> {
    let plan = &setup.plan;
    let mut server = None;
    for _ in 0..threads {
        match events.recv() {
            Ok(Event::Connected(Ok(info))) => {
                server.get_or_insert(info);
            }
            Ok(Event::Connected(Err(error))) => return Err(Failed::Connect(error)),
            Ok(_) | Err(_) => return Err(thread_stopped()),
        }
    }
    let server = server.expect("at least one thread");

    if setup.preload {
        let started = Instant::now();
        let bar = preload_bar(plan);
        for command in commands {
            command.send(Command::Preload).map_err(|_| thread_stopped())?;
        }
        let (mut done, mut failed, mut first_failure) = (0, 0, None);
        while done < threads {
            match events.recv_timeout(PRELOAD_BAR_EVERY) {
                Ok(Event::Preloaded { failed: thread_failed, first }) => {
                    done += 1;
                    failed += thread_failed;
                    if first_failure.is_none() {
                        first_failure = first;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => return Err(thread_stopped()),
            }
            bar.set_position(preloaded.load(Ordering::Relaxed));
        }
        bar.finish_and_clear();
        if let Some(first) = first_failure {
            return Err(Failed::Preload(format!(
                "preload failed: {failed} of {} PUTs failed; first: {first}",
                plan.keys
            )));
        }
        if plan.progress {
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "preloaded {} keys of {} B in {seconds:.2} s ({:.0} writes/s)",
                plan.keys,
                plan.value_size,
                plan.keys as f64 / seconds.max(f64::MIN_POSITIVE)
            );
        }
    }

    let start = Instant::now() + START_DELAY;
    for command in commands {
        command.send(Command::Run { start }).map_err(|_| thread_stopped())?;
    }
    let measure_start = start + plan.warmup;
    let end = measure_start + plan.duration;
    let mut summary = Summary::new(plan.duration);
    let mut ticks: BTreeMap<u32, (usize, Histogram<u64>, u64)> = BTreeMap::new();
    let mut last_printed = start;
    let mut rest = report::latency_histogram();
    let mut errors_total = 0;
    let mut finished = 0;
    while finished < threads {
        match events.recv().map_err(|_| thread_stopped())? {
            Event::Tick { index, interval, errors_total } => {
                let tick = ticks.entry(index).or_insert_with(|| (0, report::latency_histogram(), 0));
                tick.0 += 1;
                tick.1.add(&interval).expect("auto-resizing histograms add");
                tick.2 += errors_total;
            }
            Event::Finished(mut outcome) => {
                finished += 1;
                errors_total += outcome.recorder.take_interval(&mut rest);
                outcome.recorder.add_to(&mut summary);
                summary.connections_lost += outcome.connections_lost;
                summary.requests_abandoned += outcome.requests_abandoned;
            }
            Event::Connected(_) | Event::Preloaded { .. } => return Err(thread_stopped()),
        }
        while let Some(tick) = ticks.first_entry() {
            if tick.get().0 < threads {
                break;
            }
            let index = *tick.key();
            let (_, interval, errors) = tick.remove();
            let at = start + PROGRESS_EVERY * index;
            print_progress(at, start, measure_start, &interval, at - last_printed, errors);
            last_printed = at;
        }
    }
    // What came after the last whole second, if it is a good part of one.
    let rest_length = end.saturating_duration_since(last_printed);
    if plan.progress && rest_length >= PROGRESS_EVERY / 2 {
        print_progress(end, start, measure_start, &rest, rest_length, errors_total);
    }
    Ok(Outcome { server, summary })
}

/// Prints the progress line for the `length` before `at`.
fn print_progress(
    at: Instant,
    start: Instant,
    measure_start: Instant,
    interval: &Histogram<u64>,
    length: Duration,
    errors_total: u64,
) {
    let phase = if at - length < measure_start { "warmup" } else { "run" };
    eprintln!("{}", report::progress_line(at - start, phase, interval, length, errors_total));
}

/// One client thread: connect its connections (every `threads`th from `thread`), then do
/// what the reporting thread says.
fn client_thread(
    thread: usize,
    threads: usize,
    setup: &Arc<Setup>,
    commands: &mpsc::Receiver<Command>,
    events: &mpsc::Sender<Event>,
    preloaded: &Arc<AtomicU64>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = events.send(Event::Connected(Err(format!("cannot start a tokio runtime: {error}"))));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let indices: Vec<usize> = (thread..setup.connections).step_by(threads).collect();
        let opening: Vec<_> = indices
            .iter()
            .map(|_| {
                let setup = setup.clone();
                tokio::task::spawn_local(async move { connection::open(&setup.target, &setup.access).await })
            })
            .collect();
        let mut streams = Vec::with_capacity(indices.len());
        let mut connected = Ok(None);
        for handle in opening {
            match handle.await {
                Ok(Ok((stream, info))) => {
                    streams.push(stream);
                    if let Ok(first @ None) = &mut connected {
                        *first = Some(info);
                    }
                }
                Ok(Err(error)) => connected = Err(error),
                Err(error) => connected = Err(format!("connecting failed: {error}")),
            }
        }
        let connected = connected.map(|info| info.expect("every thread has a connection"));
        let ok = connected.is_ok();
        if events.send(Event::Connected(connected)).is_err() || !ok {
            return;
        }
        let mut connections: Vec<(usize, Stream)> = indices.into_iter().zip(streams).collect();
        loop {
            match commands.recv() {
                Ok(Command::Preload) => {
                    let (failed, first) = preload(&mut connections, setup, preloaded).await;
                    if events.send(Event::Preloaded { failed, first }).is_err() {
                        return;
                    }
                }
                Ok(Command::Run { start }) => {
                    let outcome = run(connections, setup, start, events).await;
                    let _ = events.send(Event::Finished(Box::new(outcome)));
                    return;
                }
                Ok(Command::Stop) | Err(_) => return,
            }
        }
    });
}

/// Preloads this thread's share of the keys: connection `c` of `C` writes keys `c`, `c + C`,
/// …, each once (write counter 0). Returns the PUTs that failed and the first failure.
async fn preload(
    connections: &mut Vec<(usize, Stream)>,
    setup: &Setup,
    preloaded: &Arc<AtomicU64>,
) -> (u64, Option<String>) {
    let tasks: Vec<_> = connections
        .drain(..)
        .map(|(index, stream)| {
            let work = Work::Preload {
                next: index as u64,
                stride: setup.connections as u64,
                keys: setup.plan.keys,
                failed: 0,
                first_failure: None,
                done: preloaded.clone(),
                last_reply: Instant::now(),
            };
            let driver = Driver::new(&setup.target, &setup.plan, work);
            tokio::task::spawn_local(async move {
                let (driver, stream) = drive(driver, stream).await;
                (index, stream, driver.work)
            })
        })
        .collect();
    let (mut failed_total, mut first) = (0, None);
    for task in tasks {
        let (index, stream, work) =
            task.await.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
        if let Work::Preload { failed, first_failure, .. } = work {
            failed_total += failed;
            if first.is_none() {
                first = first_failure;
            }
        }
        connections.push((index, stream));
    }
    (failed_total, first)
}

/// What every connection of one thread shares during the run.
struct Window {
    /// When the connections start sending (the warm-up's start).
    start: Instant,
    measure_start: Instant,
    end: Instant,
    give_up: Instant,
    mix: Mix,
    /// The mix deletes keys: a NOT_FOUND is then an outcome, not an error.
    deletes: bool,
    keys: KeyChooser,
    recorder: RefCell<Recorder>,
}

/// Runs this thread's connections for the warm-up and the measured window, sending a progress
/// tick each second.
async fn run(
    connections: Vec<(usize, Stream)>,
    setup: &Setup,
    start: Instant,
    events: &mpsc::Sender<Event>,
) -> ThreadOutcome {
    let plan = &setup.plan;
    let measure_start = start + plan.warmup;
    let end = measure_start + plan.duration;
    let window = Rc::new(Window {
        start,
        measure_start,
        end,
        give_up: end + Duration::from_secs(GRACE_PERIOD_SECONDS),
        mix: plan.mix.clone(),
        deletes: plan.mix.includes(Op::Delete),
        keys: KeyChooser::new(plan.distribution, plan.keys),
        recorder: RefCell::new(Recorder::default()),
    });
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|(index, stream)| {
            let schedule =
                plan.rate.map(|rate| Schedule::new(start, rate, index as u64, setup.connections as u64));
            let work = Work::Run {
                window: window.clone(),
                random: Random::new(index as u64),
                schedule,
                sent: 0,
                abandoned: 0,
            };
            let driver = Driver::new(&setup.target, plan, work);
            tokio::task::spawn_local(async move {
                // A tokio timer is late by up to a millisecond: the drivers themselves wait
                // for the exact start.
                tokio::time::sleep_until((start - Duration::from_millis(2).min(START_DELAY)).into()).await;
                let (driver, _stream) = drive(driver, stream).await;
                driver
            })
        })
        .collect();
    let drivers = async {
        let (mut lost, mut abandoned) = (0, 0);
        for task in tasks {
            let driver = task.await.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
            lost += usize::from(driver.lost);
            if let Work::Run { abandoned: driver_abandoned, .. } = driver.work {
                abandoned += driver_abandoned;
            }
        }
        (lost, abandoned)
    };
    let ticker = async {
        if !plan.progress {
            return;
        }
        for index in 1.. {
            let at = start + PROGRESS_EVERY * index;
            if at > end + PROGRESS_EVERY / 2 {
                return;
            }
            tokio::time::sleep_until(at.into()).await;
            let mut interval = report::latency_histogram();
            let errors_total = window.recorder.borrow_mut().take_interval(&mut interval);
            if events.send(Event::Tick { index, interval, errors_total }).is_err() {
                return;
            }
        }
    };
    let ((connections_lost, requests_abandoned), ()) = tokio::join!(drivers, ticker);
    let recorder = window.recorder.borrow().clone();
    ThreadOutcome { recorder, connections_lost, requests_abandoned }
}

/// When one open-loop connection means to send its requests: request `k` at `first + k ×
/// interval`, whether or not the requests before it have been answered by then.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    first: Instant,
    interval_seconds: f64,
}

impl Schedule {
    /// Connection `worker` of `workers` sharing `rate` ops/s in total from `start`: one request
    /// every `workers / rate` seconds, the connections' first requests spread evenly over the
    /// first interval.
    pub fn new(start: Instant, rate: f64, worker: u64, workers: u64) -> Schedule {
        assert!(rate > 0.0 && worker < workers);
        let interval_seconds = workers as f64 / rate;
        let offset = interval_seconds * worker as f64 / workers as f64;
        Schedule { first: start + Duration::from_secs_f64(offset), interval_seconds }
    }

    /// The intended send time of request `k` (counting from 0).
    pub fn intended(&self, k: u64) -> Instant {
        self.first + Duration::from_secs_f64(self.interval_seconds * k as f64)
    }
}

/// What one connection's task is doing.
enum Work {
    /// Writing keys `next`, `next + stride`, … below `keys`, once each.
    Preload {
        next: u64,
        stride: u64,
        keys: u64,
        failed: u64,
        first_failure: Option<String>,
        /// PUTs answered by every connection, for the progress bar.
        done: Arc<AtomicU64>,
        /// When the last reply came: [`PRELOAD_REQUEST_TIMEOUT_SECONDS`] without one ends it.
        last_reply: Instant,
    },
    /// The run: requests from the mix until the window ends.
    Run {
        window: Rc<Window>,
        random: Random,
        /// Open loop: when each request is due.
        schedule: Option<Schedule>,
        /// Requests sent so far.
        sent: u64,
        /// Requests still unanswered when the grace period ended.
        abandoned: u64,
    },
}

/// What a connection's task waits for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// Nothing left to send or to wait for.
    Finished,
    /// Waited too long for replies.
    GiveUp,
    /// A reply, or this time.
    At(Instant),
    /// A reply, or a send due within [`SPIN_WITHIN`].
    Spin,
}

/// One connection's state: its pipeline slots, its buffers and its [`Work`].
struct Driver {
    protocol: Protocol,
    codec: Codec,
    /// The request in each pipeline slot; a credshard request in slot `s` has id `s + 1`.
    slots: Vec<Asked>,
    /// When each slot's request was sent (open loop: when it was due).
    started: Vec<Instant>,
    busy: Vec<bool>,
    free: Vec<usize>,
    /// Redis: the busy slots in the order their requests were sent.
    order: VecDeque<usize>,
    in_flight: usize,
    /// Encoded requests; `out[written..]` is still to be written.
    out: BytesMut,
    written: usize,
    /// TLS buffers what is written: flush after each batch.
    flush_after_write: bool,
    flush_pending: bool,
    /// Received bytes; `input[consumed..]` is not parsed yet.
    input: Vec<u8>,
    consumed: usize,
    item_failures: Vec<Failure>,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    lost: bool,
    work: Work,
}

impl Driver {
    fn new(target: &Target, plan: &Plan, work: Work) -> Driver {
        let pipeline = plan.pipeline.max(1);
        let now = Instant::now();
        let protocol = connection::protocol(target);
        Driver {
            protocol,
            codec: Codec::new(protocol, plan.value_size),
            slots: vec![Asked::default(); pipeline],
            started: vec![now; pipeline],
            busy: vec![false; pipeline],
            free: (0..pipeline).rev().collect(),
            order: VecDeque::with_capacity(pipeline),
            in_flight: 0,
            out: BytesMut::with_capacity(64 << 10),
            written: 0,
            flush_after_write: matches!(target, Target::CredshardTls { .. }),
            flush_pending: false,
            input: Vec::with_capacity(READ_SPARE_BYTES * 2),
            consumed: 0,
            item_failures: Vec::new(),
            timer: Box::pin(tokio::time::sleep_until(now.into())),
            timer_at: now,
            lost: false,
            work,
        }
    }

    /// Fills free slots with the requests that are due at `now`, encoded into `out`.
    fn issue(&mut self, now: Instant) {
        while let Some(&slot) = self.free.last() {
            let Some(started) = self.work.next(now, &mut self.slots[slot]) else { break };
            self.free.pop();
            self.codec.encode(&self.slots[slot], slot as u32 + 1, &mut self.out);
            self.started[slot] = started;
            self.busy[slot] = true;
            if self.protocol == Protocol::Redis {
                self.order.push_back(slot);
            }
            self.in_flight += 1;
        }
    }

    fn wake(&self, now: Instant) -> Wake {
        match &self.work {
            Work::Preload { next, keys, last_reply, .. } => {
                let deadline = *last_reply + Duration::from_secs(PRELOAD_REQUEST_TIMEOUT_SECONDS);
                if self.in_flight == 0 && next >= keys {
                    Wake::Finished
                } else if now >= deadline {
                    Wake::GiveUp
                } else {
                    Wake::At(deadline)
                }
            }
            Work::Run { window, schedule, sent, .. } => {
                let sending = match schedule {
                    None => now < window.end,
                    Some(schedule) => schedule.intended(*sent) < window.end,
                };
                if !sending && self.in_flight == 0 {
                    return Wake::Finished;
                }
                if now >= window.give_up {
                    return Wake::GiveUp;
                }
                match schedule {
                    // Closed loop, woken early (the task's timer is set short of the start):
                    // the first requests go at the start.
                    None if now < window.start => {
                        if window.start.saturating_duration_since(now) <= SPIN_WITHIN {
                            Wake::Spin
                        } else {
                            Wake::At(window.start - SPIN_WITHIN)
                        }
                    }
                    // A free slot and a request still to send: it is due later (issue sent
                    // every one due by now).
                    Some(schedule) if sending && !self.free.is_empty() => {
                        let due = schedule.intended(*sent);
                        if due.saturating_duration_since(now) <= SPIN_WITHIN {
                            Wake::Spin
                        } else {
                            Wake::At(due - SPIN_WITHIN)
                        }
                    }
                    // Waiting for replies only; the timer is for a server that stalls.
                    _ => Wake::At(window.give_up),
                }
            }
        }
    }

    /// Judges and records every whole reply in `input`. `Err` when the stream is broken (the
    /// failures are recorded).
    fn on_replies(&mut self) -> Result<(), ()> {
        let finished = Instant::now();
        loop {
            let (answer, used) = match codec::next_answer(self.protocol, &self.input[self.consumed..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(failure) => {
                    self.broken(None, failure, finished);
                    return Err(());
                }
            };
            let slot = match &answer {
                Answer::Credshard { request_id, .. } => {
                    (*request_id as usize).checked_sub(1).filter(|&slot| self.busy.get(slot) == Some(&true))
                }
                Answer::Redis(_) => self.order.pop_front(),
            };
            // A reply nobody asked for means the stream is out of step.
            let Some(slot) = slot else {
                self.broken(None, Failure::Protocol, finished);
                return Err(());
            };
            self.item_failures.clear();
            let result = self.codec.judge(&self.slots[slot], &answer, &mut self.item_failures);
            if result == Err(Failure::Protocol) {
                self.broken(Some(slot), Failure::Protocol, finished);
                return Err(());
            }
            let asked = &self.slots[slot];
            match &mut self.work {
                Work::Preload { failed, first_failure, done, .. } => {
                    done.fetch_add(1, Ordering::Relaxed);
                    if let Err(failure) = result {
                        *failed += 1;
                        first_failure.get_or_insert_with(|| {
                            let mut id = String::new();
                            crate::value::key_id(asked.key_index, &mut id);
                            format!("{id}: {}", codec::describe(&answer, failure))
                        });
                    }
                }
                Work::Run { window, schedule, .. } => {
                    let op = asked.op.expect("a busy slot has a request");
                    let started = self.started[slot];
                    record(window, op, started, finished, schedule.is_some(), result, &self.item_failures);
                }
            }
            self.consumed += used;
            self.busy[slot] = false;
            self.free.push(slot);
            self.in_flight -= 1;
        }
        if let Work::Preload { last_reply, .. } = &mut self.work {
            *last_reply = finished;
        }
        if self.consumed == self.input.len() {
            self.input.clear();
            self.consumed = 0;
        } else if self.consumed > self.input.capacity() / 2 {
            self.input.drain(..self.consumed);
            self.consumed = 0;
        }
        Ok(())
    }

    /// The connection failed: `slot`'s request (if any) with `failure`, every other one in
    /// flight with [`Failure::Io`].
    fn broken(&mut self, slot: Option<usize>, failure: Failure, at: Instant) {
        self.lost = true;
        let in_flight: Vec<usize> = (0..self.slots.len()).filter(|&slot| self.busy[slot]).collect();
        match &mut self.work {
            Work::Preload { .. } => self.work.fail_the_rest(in_flight.len() as u64, || {
                format!("the connection failed ({})", failure.kind())
            }),
            Work::Run { window, schedule, .. } => {
                for busy in in_flight {
                    let op = self.slots[busy].op.expect("a busy slot has a request");
                    let failure = if Some(busy) == slot { failure } else { Failure::Io };
                    record(window, op, self.started[busy], at, schedule.is_some(), Err(failure), &[]);
                }
            }
        }
        self.busy.fill(false);
        self.in_flight = 0;
    }

    /// The wait for replies timed out.
    fn give_up(&mut self) {
        match &mut self.work {
            Work::Preload { .. } => self.work.fail_the_rest(self.in_flight as u64, || {
                format!("no reply within {PRELOAD_REQUEST_TIMEOUT_SECONDS} s")
            }),
            Work::Run { abandoned, .. } => *abandoned += self.in_flight as u64,
        }
        self.busy.fill(false);
        self.in_flight = 0;
    }
}

impl Work {
    /// Preload: counts the `in_flight` PUTs and every one not sent yet as failed (`why` is the
    /// first failure unless there was one already), and sends no more.
    fn fail_the_rest(&mut self, in_flight: u64, why: impl FnOnce() -> String) {
        if let Work::Preload { next, stride, keys, failed, first_failure, .. } = self {
            let unsent = keys.saturating_sub(*next).div_ceil(*stride);
            *failed += in_flight + unsent;
            *next = *keys;
            first_failure.get_or_insert_with(why);
        }
    }

    /// The next request, written into `asked`, if one is due at `now`; returns when it counts
    /// as sent (open loop: when it was due).
    fn next(&mut self, now: Instant, asked: &mut Asked) -> Option<Instant> {
        match self {
            Work::Preload { next, stride, keys, .. } => {
                if *next >= *keys {
                    return None;
                }
                asked.op = Some(Op::Put);
                asked.key_index = *next;
                asked.batch.clear();
                *next += *stride;
                Some(now)
            }
            Work::Run { window, random, schedule, sent, .. } => {
                let started = match schedule {
                    // Not before the start: a request sent earlier is in neither the warm-up
                    // nor the window, so the server would answer it without the run counting it.
                    None if now < window.start => return None,
                    None if now < window.end => now,
                    None => return None,
                    Some(schedule) => {
                        let due = schedule.intended(*sent);
                        if due >= window.end || due > now {
                            return None;
                        }
                        let late_us = now.saturating_duration_since(due).as_micros() as u64;
                        window
                            .recorder
                            .borrow_mut()
                            .record_send_lateness(late_us, due >= window.measure_start);
                        due
                    }
                };
                *sent += 1;
                let op = window.mix.pick(random.below(window.mix.weight_total()));
                asked.op = Some(op);
                asked.key_index = window.keys.draw(random);
                asked.batch.clear();
                if op == Op::BatchGet {
                    asked.batch.push(asked.key_index);
                    for _ in 1..window.mix.batch_size() {
                        asked.batch.push(window.keys.draw(random));
                    }
                }
                Some(started)
            }
        }
    }
}

/// Records one answered (or failed) request of the run.
fn record(
    window: &Window,
    op: Op,
    started: Instant,
    finished: Instant,
    open_loop: bool,
    result: Result<(), Failure>,
    item_failures: &[Failure],
) {
    let latency_us = finished.saturating_duration_since(started).as_micros() as u64;
    // Open loop: every request scheduled in the window is measured, even one sent or answered
    // late, so a backlog is not hidden. Closed loop: answered within the window.
    let measured = started >= window.measure_start && (open_loop || finished <= window.end);
    let deletes = window.deletes;
    let mut recorder = window.recorder.borrow_mut();
    let mut not_found_after_delete = 0;
    let mut batch_failed = false;
    for &failure in item_failures {
        if deletes && failure == Failure::Server(Status::NotFound) {
            not_found_after_delete += 1;
        } else {
            recorder.record_batch_item_error(failure.kind(), measured);
            batch_failed = true;
        }
    }
    let failure = match result {
        Err(Failure::Server(Status::NotFound)) if deletes => {
            not_found_after_delete += 1;
            None
        }
        Err(failure) => Some(failure),
        Ok(()) if batch_failed => Some(Failure::BatchItem),
        Ok(()) => None,
    };
    for _ in 0..not_found_after_delete {
        recorder.record_outcome(NOT_FOUND_AFTER_DELETE, measured);
    }
    recorder.record(op, latency_us, failure.map(Failure::kind), measured);
}

/// Runs `driver` on `stream` until its work is done or the connection fails; hands both back.
async fn drive(mut driver: Driver, mut stream: Stream) -> (Driver, Stream) {
    match &mut stream {
        Stream::Plain(tcp) => {
            let (mut reader, mut writer) = tcp.split();
            driver.run_on(&mut reader, &mut writer).await;
        }
        Stream::Tls(tls) => {
            let (mut reader, mut writer) = tokio::io::split(&mut **tls);
            driver.run_on(&mut reader, &mut writer).await;
        }
    }
    (driver, stream)
}

impl Driver {
    /// The connection's event loop: send what is due, then wait for whichever comes first of
    /// the socket taking more bytes, replies arriving, and the next send falling due.
    async fn run_on<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(&mut self, reader: &mut R, writer: &mut W) {
        loop {
            let now = Instant::now();
            self.issue(now);
            let wake = self.wake(now);
            let at = match wake {
                Wake::Finished => return,
                Wake::GiveUp => return self.give_up(),
                Wake::At(at) => Some(at),
                Wake::Spin => None,
            };
            if let Some(at) = at {
                if at != self.timer_at {
                    self.timer.as_mut().reset(at.into());
                    self.timer_at = at;
                }
            }
            if self.input.capacity() - self.input.len() < READ_SPARE_BYTES / 4 {
                self.input.reserve(READ_SPARE_BYTES);
            }
            let writing = self.written < self.out.len();
            let flushing = !writing && self.flush_pending;
            tokio::select! {
                biased;
                // Written bytes, or None for a finished flush.
                io = async {
                    if writing {
                        writer.write(&self.out[self.written..]).await.map(Some)
                    } else {
                        writer.flush().await.map(|()| None)
                    }
                }, if writing || flushing => match io {
                    Ok(Some(0)) | Err(_) => return self.broken(None, Failure::Io, Instant::now()),
                    Ok(Some(bytes)) => {
                        self.written += bytes;
                        if self.written == self.out.len() {
                            self.out.clear();
                            self.written = 0;
                            self.flush_pending = self.flush_after_write;
                        }
                    }
                    Ok(None) => self.flush_pending = false,
                },
                read = reader.read_buf(&mut self.input) => match read {
                    Ok(0) | Err(_) => return self.broken(None, Failure::Io, Instant::now()),
                    Ok(_) => {
                        if self.on_replies().is_err() {
                            return;
                        }
                    }
                },
                () = &mut self.timer, if at.is_some() => {}
                () = tokio::task::yield_now(), if wake == Wake::Spin => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_server::{self, Behaviour};

    fn setup(address: &str, connections: usize, mix: &str) -> Setup {
        Setup {
            target: Target::Credshard { address: address.to_owned() },
            access: Access::default(),
            connections,
            threads: 2,
            preload: true,
            plan: Plan {
                pipeline: 4,
                warmup: Duration::from_millis(100),
                duration: Duration::from_millis(300),
                keys: 50,
                value_size: 64,
                mix: Mix::parse(mix).unwrap(),
                distribution: Distribution::Uniform,
                rate: None,
                progress: false,
            },
        }
    }

    fn executed(setup: Setup) -> Outcome {
        execute(setup).unwrap_or_else(|failed| panic!("{failed:?}"))
    }

    #[test]
    fn a_clean_run_validates_every_read() {
        let server = fake_server::start(Behaviour::Correct);
        let outcome = executed(setup(&server.address, 3, "get=80,put=10,get_meta=10"));
        assert_eq!(outcome.server.server, "fake 0.0.0");
        let summary = &outcome.summary;
        assert!(summary.errors.is_empty() && summary.warmup_errors.is_empty(), "{:?}", summary.errors);
        for op in [Op::Get, Op::Put, Op::GetMeta] {
            assert!(!summary.per_op[op.index()].is_empty(), "no {op:?} measured");
        }
        assert_eq!((summary.connections_lost, summary.requests_abandoned), (0, 0));
        assert!(summary.send_lateness.is_empty(), "a closed loop has no schedule to be late for");
        // The pipeline was used: the server saw several requests of one connection in one read.
        assert!(server.most_requests_in_one_read() > 1, "{}", server.most_requests_in_one_read());
        assert!(server.most_requests_in_one_read() <= 4, "never more than --pipeline in flight");
    }

    #[test]
    fn missing_keys_and_wrong_values_are_errors_by_kind() {
        let server = fake_server::start(Behaviour::Correct);
        let mut no_preload = setup(&server.address, 1, "get=1");
        no_preload.preload = false;
        let summary = executed(no_preload).summary;
        assert_eq!(summary.errors.keys().copied().collect::<Vec<_>>(), ["NOT_FOUND"]);
        assert!(summary.all().is_empty());

        let server = fake_server::start(Behaviour::WrongValues);
        let summary = executed(setup(&server.address, 1, "get=1")).summary;
        assert_eq!(summary.errors.keys().copied().collect::<Vec<_>>(), ["mismatch"]);
    }

    #[test]
    fn lost_connections_end_their_work() {
        let server = fake_server::start(Behaviour::CloseAfter(20));
        let mut run = setup(&server.address, 2, "put=1");
        run.preload = false;
        let summary = executed(run).summary;
        assert_eq!(summary.connections_lost, 2);
        let io_errors = summary.errors.get("io").or(summary.warmup_errors.get("io"));
        assert!(io_errors.is_some(), "{:?} {:?}", summary.errors, summary.warmup_errors);
    }

    #[test]
    fn a_failed_preload_says_how_many_failed_and_the_first() {
        let server = fake_server::start(Behaviour::CloseAfter(10));
        let Err(Failed::Preload(message)) = execute(setup(&server.address, 1, "get=1")) else {
            panic!("the preload cannot succeed over a connection closed after 10 requests")
        };
        // The HELLO and 9 PUTs were answered: the other 41 (in flight or never sent) failed.
        assert!(message.starts_with("preload failed: 41 of 50 PUTs failed; first: "), "{message}");
    }

    #[test]
    fn an_unreachable_target_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let Err(Failed::Connect(error)) = execute(setup(&address, 2, "get=1")) else {
            panic!("connected to a closed port")
        };
        assert!(error.contains("refused"), "{error}");
    }

    #[test]
    fn the_open_loop_sends_every_scheduled_request_and_reports_its_lateness() {
        let server = fake_server::start(Behaviour::Correct);
        let mut open = setup(&server.address, 2, "get=90,put=10");
        open.plan.rate = Some(2000.0);
        open.plan.warmup = Duration::ZERO;
        open.plan.duration = Duration::from_millis(500);
        let summary = executed(open).summary;
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        // 2000 ops/s for 0.5 s, measured from the intended send times: exactly the requests
        // the two schedules hold, each sent (and its lateness recorded) once.
        let intended: u64 = (0..2)
            .map(|worker| {
                let schedule = Schedule::new(Instant::now(), 2000.0, worker, 2);
                let end = Instant::now() + Duration::from_millis(500);
                (0..).take_while(|&k| schedule.intended(k) < end).count() as u64
            })
            .sum();
        assert!(summary.all().len().abs_diff(intended) <= 2, "{} of {intended}", summary.all().len());
        assert_eq!(summary.send_lateness.len(), summary.all().len());
    }

    #[test]
    fn the_open_loop_schedule_is_start_plus_k_intervals() {
        let start = Instant::now();
        // 1000 ops/s over 4 connections: each sends every 4 ms, the connections 1 ms apart.
        let first = Schedule::new(start, 1000.0, 0, 4);
        let third = Schedule::new(start, 1000.0, 2, 4);
        let close = |a: Instant, b: Instant| a.max(b) - a.min(b) <= Duration::from_nanos(10);
        for k in [0u64, 1, 2, 10, 250, 1_000_000] {
            assert!(close(first.intended(k), start + Duration::from_millis(4 * k)), "{k}");
            assert!(close(third.intended(k), start + Duration::from_millis(4 * k + 2)), "{k}");
        }
        // Over 2 s at 1000 ops/s the 4 connections intend 2000 requests.
        let end = start + Duration::from_secs(2);
        let intended: usize = (0..4)
            .map(|worker| {
                let schedule = Schedule::new(start, 1000.0, worker, 4);
                (0..).take_while(|&k| schedule.intended(k) < end).count()
            })
            .sum();
        assert_eq!(intended, 2000);
    }

    #[test]
    fn without_progress_the_preload_bar_is_hidden() {
        // Tests and library callers that turn progress off never draw on the terminal.
        assert!(preload_bar(&setup("127.0.0.1:1", 1, "get=1").plan).is_hidden());
    }

    #[test]
    fn failures_have_kinds() {
        assert_eq!(Failure::Server(Status::NotFound).kind(), "NOT_FOUND");
        assert_eq!(Failure::Io.kind(), "io");
        assert_eq!(Failure::Protocol.kind(), "protocol");
        assert_eq!(Failure::Redis.kind(), "redis_error");
    }
}
