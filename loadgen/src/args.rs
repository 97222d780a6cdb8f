//! Command-line arguments, parsed by clap, and their checks. Every limit is named here.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::Parser;

use crate::distribution::Distribution;
use crate::mix::{Mix, Op};
use crate::target::Target;
use crate::value;

/// Most connections one loadgen opens.
pub const CONNECTIONS_MAX: u64 = 4096;
/// Most requests in flight on one connection.
pub const PIPELINE_MAX: u64 = 1024;
/// Most requests in flight in total (connections × pipeline): each holds a slot's state.
pub const IN_FLIGHT_MAX: u64 = 65_536;
/// Largest value; a server rejects values above its own limit (64 KiB by default).
pub const VALUE_BYTES_MAX: u64 = 1 << 20;
/// Longest run, warm-up included.
pub const DURATION_SECONDS_MAX: f64 = 24.0 * 3600.0;
/// Highest `--rate`, in ops/s over every connection.
pub const RATE_MAX: f64 = 100_000_000.0;

/// Drives a credshard server (or a redis server as the peer) with pipelined GET/PUT/GET_META
/// from many connections and reports throughput and latency percentiles.
#[derive(Parser, Debug)]
#[command(name = "credshard-loadgen", version)]
pub struct Args {
    /// Server to load: credshard://HOST:PORT, credshards://HOST:PORT (TLS: give --tls-ca), or
    /// redis://HOST:PORT (GET and SET; no get_meta). A credshard server with tokens needs the
    /// token in the CREDSHARD_TOKEN environment variable.
    #[arg(long, value_name = "URL", default_value = "credshard://127.0.0.1:7373", value_parser = Target::parse)]
    pub target: Target,

    /// Connections to open (one pipelining client each).
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=CONNECTIONS_MAX))]
    pub connections: usize,

    /// Requests in flight per connection: its task sends the next request as soon as a slot is
    /// free (closed loop) or due (open loop), the requests of one turn in one write.
    #[arg(long, value_name = "D", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=PIPELINE_MAX))]
    pub pipeline: usize,

    /// Measured time, in seconds ("10", "10s", "1.5s" or "500ms").
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_positive_duration)]
    pub duration: Duration,

    /// Unmeasured time before the measurement, in seconds (0 for none).
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Keys the workload spreads over: "loadgen-0" .. "loadgen-{K-1}".
    #[arg(long, value_name = "K", default_value_t = 10_000,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=value::KEYS_MAX))]
    pub keys: u64,

    /// Skip writing every key once before the run (reads of missing keys count as NOT_FOUND).
    #[arg(long)]
    pub no_preload: bool,

    /// Bytes of each value written (at least 16: the header that names the key).
    #[arg(long, value_name = "BYTES", default_value_t = 256,
          value_parser = RangedU64ValueParser::<usize>::new().range(value::HEADER_BYTES as u64..=VALUE_BYTES_MAX))]
    pub value_size: usize,

    /// Operation mix as name=weight pairs; ops: get, put, get_meta, rotate (a new version in the
    /// same verified value format, server-default grace), delete, and batch_get:N (one BATCH_GET
    /// of N keys, 1..=1000, default 10; one request in ops/latency, every item verified, failed
    /// items reported by kind). rotate, delete, batch_get and get_meta need a credshard target.
    /// With delete in the mix, NOT_FOUND (on any op or batch item) is not an error but an
    /// outcome "not_found_after_delete" (the request counts in ops); without delete it is an
    /// error.
    #[arg(long, value_name = "MIX", default_value = "get=90,put=10", value_parser = Mix::parse)]
    pub mix: Mix,

    /// Which key each request uses among --keys: uniform, or zipf:S (S > 0, e.g. zipf:0.99; key
    /// 0 is the hottest). Each connection draws from its own fixed seed.
    #[arg(long, value_name = "DIST", default_value = "uniform", value_parser = Distribution::parse)]
    pub distribution: Distribution,

    /// Open loop: total target ops/s over every connection, divided evenly over the
    /// connections, each sending at fixed intervals (at most --pipeline in flight); latency is
    /// measured from each request's intended send time, so any delay in sending counts, and the
    /// report says how late the sends were. Without it, each connection sends a request as soon
    /// as one of its --pipeline slots is free (closed loop).
    #[arg(long, value_name = "OPS", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Also write the results as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Also draw the latency distribution (HdrHistogram style, log percentile axis) as an SVG
    /// chart to PATH. `credshard-loadgen plot --out CHART.svg A.json B.json` overlays runs.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,

    /// For credshards://: the CA certificate (PEM) that signed the server's certificate.
    #[arg(long, value_name = "PATH", env = "CREDSHARD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// For credshards://: the name the server's certificate must carry [default: the target's
    /// host].
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,

    /// Change-stream watchers (WATCH) to keep open beside the load, on connections of their
    /// own (a credshard target only): the report says how many events they received.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=CONNECTIONS_MAX))]
    pub watchers: usize,

    /// What each watcher watches: all (every change) or key (watcher i the key i mod --keys).
    #[arg(long, value_name = "SCOPE", default_value = "all", value_parser = crate::watchers::WatchScope::parse)]
    pub watch_scope: crate::watchers::WatchScope,

    /// Client threads, each a single-threaded runtime owning its share of the connections
    /// [default: the number of CPUs, at most --connections].
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub threads: Option<usize>,
}

impl Args {
    /// Checks that span several arguments.
    ///
    /// # Errors
    /// A one-line message.
    pub fn check(&self) -> Result<(), String> {
        let in_flight = (self.connections * self.pipeline) as u64;
        if in_flight > IN_FLIGHT_MAX {
            return Err(format!(
                "--connections {} × --pipeline {} = {in_flight} requests in flight, above the limit of {IN_FLIGHT_MAX}",
                self.connections, self.pipeline
            ));
        }
        if (self.duration + self.warmup).as_secs_f64() > DURATION_SECONDS_MAX {
            return Err(format!("--duration plus --warmup exceeds {DURATION_SECONDS_MAX} seconds"));
        }
        if matches!(self.target, Target::Redis { .. }) {
            if let Some(op) = Op::ALL.into_iter().find(|&op| op.credshard_only() && self.mix.includes(op)) {
                return Err(format!(
                    "--mix {} is not supported with a redis:// target (only get and put)",
                    op.name()
                ));
            }
        }
        Ok(())
    }
}

/// Parses `--rate`: ops/s above 0, at most [`RATE_MAX`].
///
/// # Errors
/// A one-line message for anything else.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= RATE_MAX => Ok(rate),
        _ => Err(format!("`{text}` is not a rate in ops/s above 0 and at most {RATE_MAX}")),
    }
}

/// Parses a duration in seconds: "10", "10s", "1.5", "1.5s", or milliseconds: "500ms".
///
/// # Errors
/// A one-line message for anything else, negative or not finite.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let (number, scale) = match trimmed.strip_suffix("ms") {
        Some(number) => (number, 1e-3),
        None => (trimmed.strip_suffix('s').unwrap_or(trimmed), 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration in seconds (e.g. 10 or 10s or 500ms)"))?;
    let seconds = value * scale;
    if !seconds.is_finite() || !(0.0..=DURATION_SECONDS_MAX).contains(&seconds) {
        return Err(format!("`{text}` is not between 0 and {DURATION_SECONDS_MAX} seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// As [`parse_duration`], but zero is refused.
///
/// # Errors
/// As [`parse_duration`], and for zero.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("`{text}` must be more than 0 seconds"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "ten", "-1", "1m", "NaN", "inf", "1e9"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn defaults_and_limits() {
        let args = Args::try_parse_from(["credshard-loadgen"]).unwrap();
        assert_eq!(args.target, Target::Credshard { address: "127.0.0.1:7373".to_owned() });
        assert_eq!((args.connections, args.pipeline, args.keys, args.value_size), (50, 1, 10_000, 256));
        assert_eq!((args.duration, args.warmup), (Duration::from_secs(10), Duration::from_secs(1)));
        assert_eq!(args.mix.to_string(), "get=90,put=10");
        assert!(!args.no_preload && args.json.is_none());
        assert_eq!((args.distribution, args.rate), (Distribution::Uniform, None));
        args.check().unwrap();

        for bad in [
            &["--connections", "0"][..],
            &["--pipeline", "0"],
            &["--value-size", "15"],
            &["--keys", "100000001"],
            &["--duration", "0"],
            &["--mix", "get=1,bogus=2"],
            &["--target", "rediss://127.0.0.1:6379"],
            &["--distribution", "zipf:0"],
            &["--distribution", "pareto"],
            &["--rate", "0"],
            &["--rate", "-5"],
            &["--rate", "fast"],
        ] {
            let argv = std::iter::once("credshard-loadgen").chain(bad.iter().copied());
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let args =
            Args::try_parse_from(["credshard-loadgen", "--connections", "4096", "--pipeline", "17"]).unwrap();
        assert!(args.check().is_err());

        let redis = ["credshard-loadgen", "--target", "redis://127.0.0.1:6379", "--mix"];
        let args = Args::try_parse_from(redis.into_iter().chain(["get=80,put=20"])).unwrap();
        args.check().unwrap();
        let args = Args::try_parse_from(redis.into_iter().chain(["get=80,get_meta=20"])).unwrap();
        assert!(args.check().unwrap_err().contains("get_meta"));
        for op in ["rotate=1", "delete=1", "batch_get:5=1", "batch_get=1"] {
            let mix = format!("get=80,{op}");
            let args = Args::try_parse_from(redis.into_iter().chain([mix.as_str()])).unwrap();
            let error = args.check().unwrap_err();
            assert!(error.contains(op.split([':', '=']).next().unwrap()), "{op}: {error}");
        }

        let args = Args::try_parse_from([
            "credshard-loadgen",
            "--distribution",
            "zipf:0.99",
            "--rate",
            "2000",
            "--mix",
            "get=70,put=10,rotate=10,batch_get:10=10",
        ])
        .unwrap();
        args.check().unwrap();
        assert_eq!((args.distribution, args.rate), (Distribution::Zipf(0.99), Some(2000.0)));
    }
}
