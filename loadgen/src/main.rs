//! `credshard-loadgen`: drives a credshard server with a mix of GET, PUT, GET_META, ROTATE,
//! DELETE and BATCH_GET from many pipelined connections, closed loop or at a fixed rate, and
//! reports throughput and latency percentiles. A redis server can be loaded the same way (GET
//! and SET) as the peer to compare with.
//!
//! - [`args`]: command-line arguments and their limits.
//! - [`target`]: the `--target` URL.
//! - [`redis`]: a minimal RESP2 codec (replies parsed in place).
//! - [`codec`]: the requests each op sends, encoded into a connection's write buffer, and how
//!   its replies are judged in place; failure kinds.
//! - [`connection`]: opening a connection (TCP, TLS) and its HELLO.
//! - [`mix`]: the operation mix.
//! - [`distribution`]: which key each request uses (uniform or zipf).
//! - [`value`]: self-describing values, so every read is checked.
//! - [`workload`]: the client threads, one task per connection, the preload, the run and the
//!   progress line.
//! - [`report`]: latency recording, the final table and the JSON file.
//! - [`plot`]: latency percentile charts as SVG (`--plot`, and `plot` to overlay JSON results).
//! - [`watchers`]: change-stream watchers beside the load (`--watchers`).
//!
//! Exit codes: 0 after a run (errors are reported, not fatal), 1 when the run could not be
//! measured (the preload failed, every connection was lost, the JSON file could not be
//! written), 2 for bad arguments or an unreachable target.

#![forbid(unsafe_code)]

mod args;
mod codec;
mod connection;
mod distribution;
#[cfg(test)]
mod fake_server;
mod mix;
mod plot;
mod redis;
mod report;
mod target;
mod value;
mod watchers;
mod workload;

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use credshard_protocol::ClientTls;

use crate::args::Args;
use crate::report::RunInfo;
use crate::target::Target;
use crate::workload::{Failed, Plan, Setup};

/// Why the loadgen stopped without a full report.
enum Exit {
    /// Bad arguments or an unreachable target: exit code 2.
    Usage(String),
    /// The run could not be measured: exit code 1.
    Failed(String),
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("plot") {
        return match plot_files(std::env::args().skip(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => exit(failure),
        };
    }
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => return exit(Exit::Usage(clap_message(&error))),
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => exit(failure),
    }
}

fn exit(failure: Exit) -> ExitCode {
    let (message, code) = match failure {
        Exit::Usage(message) => (message, 2),
        Exit::Failed(message) => (message, 1),
    };
    eprintln!("credshard-loadgen: {message}");
    ExitCode::from(code)
}

/// The first line of a clap error, without its `error: ` prefix, so that a bad argument costs
/// one line on stderr.
fn clap_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let first = rendered.lines().find(|line| !line.trim().is_empty()).unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see --help)")
}

fn run(args: Args) -> Result<(), Exit> {
    args.check().map_err(Exit::Usage)?;
    // Opened before the run so that a bad path fails in a second, not after the run.
    let json_file = match &args.json {
        Some(path) => Some(
            File::create(path)
                .map_err(|error| Exit::Usage(format!("cannot write {}: {error}", path.display())))?,
        ),
        None => None,
    };
    match run_checked(&args, json_file) {
        Ok(Reported::Complete) => Ok(()),
        Ok(Reported::EveryConnectionLost) => {
            Err(Exit::Failed(format!("every connection to {} was lost during the run", args.target)))
        }
        Err(failure) => {
            if let Some(path) = &args.json {
                // Leave no empty or stale results behind a run that did not report.
                let _ = std::fs::remove_file(path);
            }
            Err(failure)
        }
    }
}

/// `credshard-loadgen plot --out CHART.svg RESULT.json...`: one chart overlaying the
/// latency distributions of several runs (e.g. credshard and Redis with the same settings).
#[derive(Parser)]
#[command(name = "credshard-loadgen plot")]
struct PlotArgs {
    /// The SVG file to write.
    #[arg(long, value_name = "PATH")]
    out: std::path::PathBuf,
    /// The chart's title.
    #[arg(long, default_value = "Latency by percentile")]
    title: String,
    /// JSON results written by `--json`.
    #[arg(required = true, value_name = "RESULT.json")]
    results: Vec<std::path::PathBuf>,
}

/// The token (from CREDSHARD_TOKEN) and, for credshards://, the TLS settings.
fn access(args: &Args) -> Result<codec::Access, String> {
    let token = std::env::var("CREDSHARD_TOKEN").unwrap_or_default().into_bytes();
    let tls = match (&args.target, &args.tls_ca) {
        (Target::CredshardTls { host, .. }, Some(ca)) => {
            let name = args.tls_name.as_deref().unwrap_or(host);
            Some(ClientTls::from_ca_file(ca, name).map_err(|error| format!("--tls-ca: {error}"))?)
        }
        (Target::CredshardTls { .. }, None) => return Err("credshards:// needs --tls-ca PATH".to_owned()),
        (_, Some(_)) => return Err("--tls-ca is only for credshards:// targets".to_owned()),
        (_, None) => None,
    };
    Ok(codec::Access { token, tls })
}

fn plot_files(arguments: impl Iterator<Item = String>) -> Result<(), Exit> {
    let args = match PlotArgs::try_parse_from(arguments) {
        Ok(args) => args,
        Err(error) if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = error.print();
            return Ok(());
        }
        Err(error) => return Err(Exit::Usage(clap_message(&error))),
    };
    let series = args
        .results
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .map_err(|error| Exit::Usage(format!("cannot read {}: {error}", path.display())))?;
            plot::Series::from_json(&text)
                .map_err(|error| Exit::Usage(format!("{}: {error}", path.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::write(&args.out, plot::svg(&args.title, &series))
        .map_err(|error| Exit::Usage(format!("cannot write {}: {error}", args.out.display())))
}

/// How a run that printed its report went.
enum Reported {
    Complete,
    EveryConnectionLost,
}

fn run_checked(args: &Args, json_file: Option<File>) -> Result<Reported, Exit> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .min(args.connections);
    let plan = Plan {
        pipeline: args.pipeline,
        warmup: args.warmup,
        duration: args.duration,
        keys: args.keys,
        value_size: args.value_size,
        mix: args.mix.clone(),
        distribution: args.distribution,
        rate: args.rate,
        progress: true,
    };
    let access = access(args).map_err(Exit::Usage)?;
    let watchers = match (args.watchers, &args.target) {
        (0, _) => None,
        (_, Target::Redis { .. }) => {
            return Err(Exit::Usage("--watchers needs a credshard target".to_owned()))
        }
        (count, target) => Some(
            watchers::Watchers::start(target, &access, count, args.watch_scope, args.keys)
                .map_err(|error| Exit::Usage(format!("cannot open the watchers: {error}")))?,
        ),
    };
    let setup = Setup {
        target: args.target.clone(),
        access,
        connections: args.connections,
        threads,
        preload: !args.no_preload,
        plan,
    };
    let outcome = workload::execute(setup).map_err(|failed| match failed {
        Failed::Connect(error) => Exit::Usage(format!("cannot connect to {}: {error}", args.target)),
        Failed::Preload(error) | Failed::Thread(error) => Exit::Failed(error),
    })?;
    let (hello, summary) = (outcome.server, outcome.summary);

    let info = RunInfo {
        target: args.target.to_string(),
        server: hello.server,
        shard_count: hello.shard_count,
        connections: args.connections,
        pipeline: args.pipeline,
        threads,
        warmup: args.warmup,
        keys: args.keys,
        value_size: args.value_size,
        mix: args.mix.to_string(),
        preload: !args.no_preload,
        distribution: args.distribution.to_string(),
        rate: args.rate,
    };
    print!("{}", report::table(&info, &summary));
    if let Some(watchers) = watchers {
        let watched = watchers.finish().map_err(Exit::Failed)?;
        println!(
            "watchers: {} ({:?}), {} events received, {} streams ended early",
            watched.watchers, args.watch_scope, watched.events, watched.ended
        );
    }
    if let (Some(mut file), Some(path)) = (json_file, &args.json) {
        file.write_all(report::json(&info, &summary).as_bytes())
            .map_err(|error| Exit::Failed(format!("cannot write {}: {error}", path.display())))?;
    }
    if let Some(path) = &args.plot {
        let series = plot::Series::of(&info.target, &summary.all());
        let title =
            format!("{} ({}, {} connections × {})", info.mix, info.target, info.connections, info.pipeline);
        std::fs::write(path, plot::svg(&title, &[series]))
            .map_err(|error| Exit::Failed(format!("cannot write {}: {error}", path.display())))?;
    }
    if summary.connections_lost == args.connections {
        return Ok(Reported::EveryConnectionLost);
    }
    Ok(Reported::Complete)
}
