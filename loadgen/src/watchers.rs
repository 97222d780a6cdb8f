//! `--watchers N`: change-stream subscribers beside the load, to measure what watching costs
//! the writers (the run's own figures) and what the watchers receive.
//!
//! The watchers run on a thread of their own (one single-threaded runtime), each on its own
//! connection: HELLO, WATCH (every change, or one key's), then it reads and counts event
//! frames until the run ends. A watcher whose stream ends early (it fell behind, or the
//! connection broke) is counted as ended.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use credshard_protocol::client::ResponseFrame;
use credshard_protocol::op::watch::{WatchFilter, WatchRequest};
use credshard_protocol::{Request, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::Access;
use crate::connection::{self, Stream};
use crate::target::Target;
use crate::value;

/// What each watcher asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchScope {
    /// Every change.
    All,
    /// The changes of one key: watcher i watches key i (mod --keys).
    Key,
}

impl WatchScope {
    pub fn parse(text: &str) -> Result<WatchScope, String> {
        match text {
            "all" => Ok(WatchScope::All),
            "key" => Ok(WatchScope::Key),
            other => Err(format!("unknown watch scope {other:?} (all or key)")),
        }
    }
}

/// Watchers running; [`Watchers::finish`] stops them and tells what they received.
pub struct Watchers {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<WatchReport, String>>,
}

/// What the watchers received.
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchReport {
    pub watchers: usize,
    pub events: u64,
    /// Streams that ended before the run did.
    pub ended: u64,
}

impl Watchers {
    /// Opens `count` watchers and returns once every one has its WATCH answered.
    ///
    /// # Errors
    /// A one-line message if a watcher cannot connect or its WATCH is refused.
    pub fn start(
        target: &Target,
        access: &Access,
        count: usize,
        scope: WatchScope,
        keys: u64,
    ) -> Result<Watchers, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let (target, access, thread_stop) = (target.clone(), access.clone(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async move {
                let events = Arc::new(AtomicU64::new(0));
                let ended = Arc::new(AtomicU64::new(0));
                let mut streams = Vec::with_capacity(count);
                for index in 0..count {
                    let mut key = String::new();
                    value::key_id(index as u64 % keys, &mut key);
                    let filter = match scope {
                        WatchScope::All => WatchFilter::All,
                        WatchScope::Key => WatchFilter::Id(&key),
                    };
                    match subscribe(&target, &access, WatchRequest { filter, resume: None }).await {
                        Ok(stream) => streams.push(stream),
                        Err(error) => {
                            let _ = ready_sender.send(Err(format!("watcher {index}: {error}")));
                            return Err(error);
                        }
                    }
                }
                let _ = ready_sender.send(Ok(()));
                let tasks: Vec<_> = streams
                    .into_iter()
                    .map(|(stream, input)| {
                        let (events, ended, stop) =
                            (Arc::clone(&events), Arc::clone(&ended), Arc::clone(&thread_stop));
                        tokio::spawn(async move {
                            let finished_early = match stream {
                                Stream::Plain(mut tcp) => count_events(&mut tcp, input, &events, &stop).await,
                                Stream::Tls(mut tls) => count_events(&mut *tls, input, &events, &stop).await,
                            };
                            if finished_early {
                                ended.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
                Ok(WatchReport {
                    watchers: count,
                    events: events.load(Ordering::Relaxed),
                    ended: ended.load(Ordering::Relaxed),
                })
            })
        });
        match ready.recv() {
            Ok(Ok(())) => Ok(Watchers { stop, thread }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(thread.join().map_or_else(
                |_| "the watcher thread panicked".to_owned(),
                |result| result.err().unwrap_or_else(|| "the watcher thread stopped".to_owned()),
            )),
        }
    }

    /// Stops the watchers and reports what they received.
    ///
    /// # Errors
    /// A one-line message if their thread failed.
    pub fn finish(self) -> Result<WatchReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| "the watcher thread panicked".to_owned())?
    }
}

/// Connects, says HELLO and WATCH, and waits for the WATCH's reply; returns the stream and
/// whatever was read after the reply.
async fn subscribe(
    target: &Target,
    access: &Access,
    request: WatchRequest<'_>,
) -> Result<(Stream, BytesMut), String> {
    let (mut stream, _) = connection::open(target, access).await?;
    let mut out = BytesMut::new();
    Request::Watch(request).encode(2, &mut out);
    let mut input = BytesMut::with_capacity(64 * 1024);
    let reply = match &mut stream {
        Stream::Plain(tcp) => exchange(tcp, &out, &mut input).await?,
        Stream::Tls(tls) => exchange(&mut **tls, &out, &mut input).await?,
    };
    if reply.status != Status::Ok as u8 {
        return Err(format!("WATCH refused with status {}", reply.status));
    }
    Ok((stream, input))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    input: &mut BytesMut,
) -> Result<ResponseFrame, String> {
    stream.write_all(request).await.map_err(|error| error.to_string())?;
    stream.flush().await.map_err(|error| error.to_string())?;
    loop {
        if let Some(frame) = ResponseFrame::take(input).map_err(|error| error.to_string())? {
            return Ok(frame);
        }
        match stream.read_buf(input).await {
            Ok(0) => return Err("the connection was closed before WATCH was answered".to_owned()),
            Ok(_) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// Counts event frames until `stop`; returns true if the stream ended before that.
async fn count_events<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut input: BytesMut,
    events: &AtomicU64,
    stop: &AtomicBool,
) -> bool {
    loop {
        loop {
            match ResponseFrame::take(&mut input) {
                Ok(Some(frame)) if frame.status == Status::Ok as u8 => {
                    events.fetch_add(1, Ordering::Relaxed);
                }
                // An error frame ends the stream (fell behind, token revoked).
                Ok(Some(_)) | Err(_) => return !stop.load(Ordering::Relaxed),
                Ok(None) => break,
            }
        }
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read_buf(&mut input)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return !stop.load(Ordering::Relaxed),
            Ok(Ok(_)) => {}
        }
    }
}
