//! What the runtime costs per loopback TCP round trip: a glommio echo server (one executor on
//! its own thread, as a credshard shard runs) beside a tokio `current_thread` echo server on its
//! own thread, the client being the same blocking `std::net` client in the bench thread for
//! both. The servers do no work beyond reading and writing back, so the difference is the
//! runtime: its wake-up, its reactor (io_uring for glommio, epoll for tokio) and its syscalls.
//!
//! - `loopback/ping_pong`: a 64-byte request, a 64-byte reply, one at a time.
//! - `loopback/pipelined_16`: 16 requests of 64 bytes written at once (one `write`, as a
//!   client that coalesces its pipeline sends them), then their 16 replies read; throughput is
//!   counted in round trips.
//!
//! A third server, glommio with `spin_before_park(100 µs)` (credshard's
//! `--spin-before-park-us 100`), shows how much of glommio's round trip is the executor going
//! to sleep and being woken between requests.
//!
//! Each server accepts one connection and returns when the client closes it; the bench then
//! joins both server threads, so nothing outlives it. Neither side is pinned: on a 2-core
//! machine the client and the server each get about one core.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const MESSAGE_BYTES: usize = 64;
const IN_FLIGHT: usize = 16;
/// The servers' read buffer: more than a whole pipeline.
const BUFFER_BYTES: usize = 64 * 1024;

/// A running echo server: its name in the results, where it listens and how to wait for it
/// to end.
struct EchoServer {
    name: &'static str,
    address: SocketAddr,
    join: Box<dyn FnOnce()>,
}

/// How long the spinning glommio server spins before it parks.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(100);

/// A glommio echo server on one executor (its own thread, unpinned). `spin_before_park`
/// `None` is glommio's and credshard's default: park as soon as there is nothing to run.
fn glommio_server(name: &'static str, spin_before_park: Option<Duration>) -> EchoServer {
    use futures::{AsyncReadExt, AsyncWriteExt};

    let (address_sender, address_receiver) = mpsc::channel();
    let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).name(name);
    if let Some(spin_before_park) = spin_before_park {
        builder = builder.spin_before_park(spin_before_park);
    }
    let executor = builder
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0")?;
            address_sender.send(listener.local_addr()?).expect("the bench waits for the address");
            let mut stream = listener.accept().await?;
            stream.set_nodelay(true)?;
            let mut buffer = vec![0u8; BUFFER_BYTES];
            loop {
                let read = stream.read(&mut buffer).await?;
                if read == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                stream.write_all(&buffer[..read]).await?;
            }
        })
        .expect("cannot spawn the glommio executor");
    let address = match address_receiver.recv() {
        Ok(address) => address,
        // The executor ended before listening: its result says why (e.g. MemLockLimit).
        Err(_) => panic!("the glommio echo server did not start: {:?}", executor.join()),
    };
    let join = Box::new(move || {
        executor.join().expect("glommio executor").expect("glommio echo server");
    });
    EchoServer { name, address, join }
}

/// A tokio `current_thread` echo server on its own thread.
fn tokio_server() -> EchoServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the tokio echo server");
    let address = listener.local_addr().expect("local address");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let thread = std::thread::Builder::new()
        .name("echo-tokio".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let (mut stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let mut buffer = vec![0u8; BUFFER_BYTES];
                loop {
                    let read = stream.read(&mut buffer).await?;
                    if read == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    stream.write_all(&buffer[..read]).await?;
                }
            })
        })
        .expect("cannot spawn the tokio server thread");
    let join = Box::new(move || {
        thread.join().expect("tokio server thread").expect("tokio echo server");
    });
    EchoServer { name: "tokio", address, join }
}

/// The blocking client of both servers.
fn connect(server: &EchoServer) -> TcpStream {
    let stream = TcpStream::connect(server.address).expect("connect to the echo server");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

/// Sends `requests` (whole messages) and reads back as many bytes.
fn round_trip(stream: &mut TcpStream, requests: &[u8], replies: &mut [u8]) {
    stream.write_all(requests).expect("send");
    stream.read_exact(replies).expect("receive");
    debug_assert_eq!(requests, replies);
}

fn loopback(criterion: &mut Criterion) {
    let servers = [
        glommio_server("glommio", None),
        glommio_server("glommio_spin_100us", Some(SPIN_BEFORE_PARK)),
        tokio_server(),
    ];
    let mut clients: Vec<TcpStream> = servers.iter().map(connect).collect();
    let requests: Vec<u8> = (0..MESSAGE_BYTES * IN_FLIGHT).map(|index| index as u8).collect();
    let mut replies = vec![0u8; requests.len()];

    for (group_name, in_flight) in [("loopback/ping_pong", 1), ("loopback/pipelined_16", IN_FLIGHT)] {
        let mut group = criterion.benchmark_group(group_name);
        group.throughput(Throughput::Elements(in_flight as u64));
        let bytes = MESSAGE_BYTES * in_flight;
        for (server, client) in servers.iter().zip(&mut clients) {
            group.bench_function(BenchmarkId::from_parameter(server.name), |bencher| {
                bencher.iter(|| round_trip(client, &requests[..bytes], &mut replies[..bytes]))
            });
        }
        group.finish();
    }

    // Closing the connections ends the servers; joining them leaves no thread behind.
    drop(clients);
    for server in servers {
        (server.join)();
    }
}

criterion_group!(benches, loopback);
criterion_main!(benches);
