#!/usr/bin/env bash
# Compares credshard with redis-server under identical credshard-loadgen settings and writes
# docs/performance-compare.md (and the same text into docs/performance.md, between the
# "compare.sh" markers), with one overlay latency chart per configuration in docs/charts/
# (`credshard-loadgen plot` of the four runs' JSON results, e.g. docs/charts/p1-c50-90-10.svg:
# pipeline 1, 50 connections, get=90,put=10; unpinned ones are prefixed `unpinned-`).
#
#   bash bench/compare.sh
#
# Environment knobs:
#   COMPARE_QUICK=1       a smoke run in about a minute: one pinned cell (get=90,put=10, pipeline
#                         1, 50 connections) and the unpinned one, 1,000 keys, 1 s runs, no
#                         redis-benchmark; writes to target/compare-quick/ unless
#                         COMPARE_OUT_DIR is set, so the committed document stays untouched.
#   COMPARE_OUT_DIR=DIR   where performance-compare.md and charts/ go (default docs/).
#   COMPARE_SKIP_BUILD=1  use the binaries in target/release as they are.
#   KEEP_TMP=1            keep the temp dir with every run's JSON and logs.
#
# Servers: credshard --fsync never, credshard --fsync always, redis-server with persistence off
# (--save '' --appendonly no) and redis-server with --appendonly yes --appendfsync always. Every
# run starts a fresh server (own port, own data dir under a temp dir) and stops it by its PID.
# Pinned rows: server on CPU 1 (credshard --shards 1), loadgen on CPU 0 (--threads 1). One row is
# repeated unpinned (credshard --shards 2, loadgen --threads 2). bench/loadgen_check.sh, pinned the
# same way, cross-checks the loadgen against redis-benchmark and redis's own count.
#
# Runs unattended in well under 10 minutes on a 2-CPU machine. A failed run is recorded as
# "failed" in the document; a missing binary aborts.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
QUICK="${COMPARE_QUICK:-0}"
if [ "$QUICK" = 1 ]; then OUT_DIR="${COMPARE_OUT_DIR:-$ROOT/target/compare-quick}"; else OUT_DIR="${COMPARE_OUT_DIR:-$ROOT/docs}"; fi
OUT_DOC="$OUT_DIR/performance-compare.md"
CHART_DIR="$OUT_DIR/charts"
SERVER_BIN="$ROOT/target/release/credshard"
LOADGEN_BIN="$ROOT/target/release/credshard-loadgen"

# Workload settings (identical for every server).
VALUE_SIZE=256
KEYS=100000
DURATION=4
WARMUP=1
MIXES=("get=90,put=10" "get=50,put=50")
PIPELINES=(1 16)
CONNECTIONS=(50 1000)
SERVERS=(credshard-never credshard-always redis-off redis-always)
# Wall-clock budget for the loadgen runs (the 10-minute limit minus build and redis-benchmark).
RUN_BUDGET_S=480
# Per-run overhead on top of warmup + duration: server start/stop and the 100k-key preload.
RUN_OVERHEAD_S=3
LOADGEN_TIMEOUT_S=90
if [ "$QUICK" = 1 ]; then
    KEYS=1000
    DURATION=1
    WARMUP=1
    MIXES=("get=90,put=10")
    PIPELINES=(1)
    CONNECTIONS=(50)
fi

START_TS=$(date +%s)
log() { printf '[%4ds] %s\n' "$(( $(date +%s) - START_TS ))" "$*" >&2; }
die() { printf 'compare.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
    || ! command -v redis-cli >/dev/null; then
    log "installing redis-server and redis-tools with apt-get"
    $SUDO apt-get update
    $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools
fi
for tool in redis-server redis-benchmark redis-cli python3 taskset ss cargo git; do
    command -v "$tool" >/dev/null || die "required tool '$tool' not found in PATH"
done
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (pins the server on CPU 1, the loadgen on CPU 0)"

if [ "${COMPARE_SKIP_BUILD:-0}" = 1 ]; then
    log "COMPARE_SKIP_BUILD=1: using the binaries in target/release as they are"
else
    log "building release binaries (cargo build --release --bins)"
    cargo build --release --bins
fi
mkdir -p "$CHART_DIR"
[ -x "$SERVER_BIN" ] || die "missing binary $SERVER_BIN (cargo build --release --bins did not produce it)"
[ -x "$LOADGEN_BIN" ] || die "missing binary $LOADGEN_BIN (cargo build --release --bins did not produce it)"

# ---------------------------------------------------------------- process bookkeeping
TMP="$(mktemp -d -t credshard-compare.XXXXXX)"
PIDS=()      # every server PID this script started
PORTS=()     # every port those servers listened on
cleanup() {
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "raw results kept in $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_listening() { [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }

# stop_server PID PORT: SIGTERM, wait up to 10 s, then SIGKILL; verify the port is closed.
stop_server() {
    local pid=$1 port=$2
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "warning: server pid $pid ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 50); do port_listening "$port" || break; sleep 0.1; done
    if port_listening "$port"; then
        log "warning: port $port still listening after stopping pid $pid"
        return 1
    fi
    return 0
}

# start_server KIND PIN(yes|no) DIR -> sets SRV_PID, SRV_ADDR, SRV_CMD; returns 1 on failure.
start_server() {
    local kind=$1 pin=$2 dir=$3 shards=2
    local -a prefix=() cmd=()
    mkdir -p "$dir/data"
    if [ "$pin" = yes ]; then prefix=(taskset -c 1); shards=1; fi
    case "$kind" in
        credshard-never|credshard-always)
            cmd=("${prefix[@]+"${prefix[@]}"}" "$SERVER_BIN" serve --listen 127.0.0.1:0
                 --shards "$shards" --fsync "${kind#credshard-}" --data-dir "$dir/data")
            ;;
        redis-off|redis-always)
            local port; port=$(free_port)
            cmd=("${prefix[@]+"${prefix[@]}"}" redis-server --bind 127.0.0.1 --port "$port"
                 --dir "$dir/data" --daemonize no --protected-mode no --maxclients 10000
                 --logfile "$dir/redis.log")
            if [ "$kind" = redis-off ]; then
                cmd+=(--save '' --appendonly no)
            else
                cmd+=(--save '' --appendonly yes --appendfsync always)
            fi
            ;;
        *) die "unknown server kind $kind" ;;
    esac
    SRV_CMD="$(printf '%q ' "${cmd[@]}")"
    "${cmd[@]}" >"$dir/server.out" 2>"$dir/server.err" &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    SRV_ADDR=""
    for _ in $(seq 150); do
        if ! kill -0 "$SRV_PID" 2>/dev/null; then break; fi
        case "$kind" in
            credshard-*)
                SRV_ADDR=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$dir/server.out" | head -1)
                ;;
            redis-*)
                if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
                    SRV_ADDR="127.0.0.1:$port"
                fi
                ;;
        esac
        [ -n "$SRV_ADDR" ] && break
        sleep 0.1
    done
    if [ -z "$SRV_ADDR" ]; then
        log "server $kind failed to start: $(tail -c 400 "$dir/server.err" "$dir/server.out" 2>/dev/null | tr '\n' ' ')"
        kill -KILL "$SRV_PID" 2>/dev/null || true
        wait "$SRV_PID" 2>/dev/null || true
        return 1
    fi
    PORTS+=("${SRV_ADDR##*:}")
    return 0
}

# ---------------------------------------------------------------- time budget
PINNED_CELLS=$(( ${#MIXES[@]} * ${#PIPELINES[@]} * ${#CONNECTIONS[@]} ))
UNPINNED_CELLS=1
PER_RUN_S=$(( WARMUP + DURATION + RUN_OVERHEAD_S ))
FULL_RUNS=$(( (PINNED_CELLS + UNPINNED_CELLS) * ${#SERVERS[@]} ))
FULL_EST_S=$(( FULL_RUNS * PER_RUN_S ))
DROP_1000_P16=no
if [ "$FULL_EST_S" -gt "$RUN_BUDGET_S" ]; then
    DROP_1000_P16=yes
    PINNED_CELLS=$(( PINNED_CELLS - ${#MIXES[@]} ))
fi
TOTAL_RUNS=$(( (PINNED_CELLS + UNPINNED_CELLS) * ${#SERVERS[@]} ))
EST_S=$(( TOTAL_RUNS * PER_RUN_S ))
log "full matrix: $FULL_RUNS runs x ~${PER_RUN_S}s = ~${FULL_EST_S}s (budget ${RUN_BUDGET_S}s); dropping 1000-conn x pipeline-16 cells: $DROP_1000_P16; planned: $TOTAL_RUNS runs, ~${EST_S}s"

# ---------------------------------------------------------------- loadgen runs
RECORDS="$TMP/records.tsv"
: >"$RECORDS"
RUN_NO=0

# run_cell SECTION PIN MIX PIPELINE CONNS
run_cell() {
    local section=$1 pin=$2 mix=$3 pipeline=$4 conns=$5 server
    for server in "${SERVERS[@]}"; do
        RUN_NO=$((RUN_NO + 1))
        local dir="$TMP/run-$RUN_NO" status=ok json lg_cmd="" srv_cmd="" rc=0 threads=2
        local -a lg_prefix=() lg=()
        json="$dir/result.json"
        mkdir -p "$dir"
        if [ "$pin" = yes ]; then lg_prefix=(taskset -c 0); threads=1; fi
        log "run $RUN_NO/$TOTAL_RUNS: [$section] $server mix=$mix pipeline=$pipeline connections=$conns"
        if start_server "$server" "$pin" "$dir"; then
            srv_cmd="$SRV_CMD"
            local scheme=credshard
            case "$server" in redis-*) scheme=redis ;; esac
            lg=("${lg_prefix[@]+"${lg_prefix[@]}"}" "$LOADGEN_BIN" --target "$scheme://$SRV_ADDR"
                --connections "$conns" --pipeline "$pipeline" --threads "$threads"
                --duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS"
                --value-size "$VALUE_SIZE" --mix "$mix" --json "$json")
            lg_cmd="$(printf '%q ' "${lg[@]}")"
            timeout "$LOADGEN_TIMEOUT_S" "${lg[@]}" >"$dir/loadgen.out" 2>"$dir/loadgen.err" || rc=$?
            if [ "$rc" -ne 0 ] || [ ! -s "$json" ]; then
                status="failed (loadgen exit $rc)"
                log "  loadgen failed (exit $rc): $(tail -n 3 "$dir/loadgen.err" | tr '\n' ' ')"
            fi
            if ! stop_server "$SRV_PID" "${SRV_ADDR##*:}"; then
                if [ "$status" = ok ]; then status="ok (server port stayed open after stop)"; fi
            fi
        else
            srv_cmd="$SRV_CMD"
            status="failed (server did not start)"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$mix" "$pipeline" "$conns" \
            "$server" "$status" "$json" "${lg_cmd% }" "${srv_cmd% }" >>"$RECORDS"
    done
}

for mix in "${MIXES[@]}"; do
    for pipeline in "${PIPELINES[@]}"; do
        for conns in "${CONNECTIONS[@]}"; do
            if [ "$DROP_1000_P16" = yes ] && [ "$conns" = 1000 ] && [ "$pipeline" = 16 ]; then
                continue
            fi
            run_cell pinned yes "$mix" "$pipeline" "$conns"
        done
    done
done
run_cell unpinned no "get=90,put=10" 1 50

# ---------------------------------------------------------------- redis-benchmark cross-check
# bench/loadgen_check.sh: redis-benchmark and redis's own count beside the loadgen, pass/fail.
BENCH_OUT="$TMP/loadgen-check.md"
: >"$BENCH_OUT"
if [ "$QUICK" = 1 ]; then
    log "COMPARE_QUICK=1: no redis-benchmark cross-check"
    echo "skipped (COMPARE_QUICK=1)" >>"$BENCH_OUT"
else
    log "redis-benchmark cross-check: bench/loadgen_check.sh"
    rc=0
    CHECK_SKIP_BUILD=1 CHECK_OUT="$TMP/loadgen-check-block.md" bash "$ROOT/bench/loadgen_check.sh" \
        >/dev/null 2>"$TMP/loadgen-check.err" || rc=$?
    if [ -s "$TMP/loadgen-check-block.md" ]; then
        sed '/^<!--/d' "$TMP/loadgen-check-block.md" >>"$BENCH_OUT"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "**The check FAILED** (bench/loadgen_check.sh exit $rc): $(tail -n 3 "$TMP/loadgen-check.err" | tr '\n' ' ')" >>"$BENCH_OUT"
    fi
fi

# ---------------------------------------------------------------- leftovers check
LEFTOVER=""
for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
    if kill -0 "$pid" 2>/dev/null; then LEFTOVER+="pid $pid still running; "; fi
done
for port in "${PORTS[@]+"${PORTS[@]}"}"; do
    if port_listening "$port"; then LEFTOVER+="port $port still listening; "; fi
done
if [ -z "$LEFTOVER" ]; then LEFTOVER="none (all ${#PIDS[@]} server processes exited; none of their ${#PORTS[@]} ports is listening)"; fi
log "leftover servers: $LEFTOVER"

# ---------------------------------------------------------------- document
END_TS=$(date +%s)
export RECORDS BENCH_OUT OUT_DOC CHART_DIR LOADGEN_BIN TMP QUICK LEFTOVER DROP_1000_P16 VALUE_SIZE KEYS DURATION WARMUP
export FULL_RUNS FULL_EST_S RUN_BUDGET_S TOTAL_RUNS EST_S PER_RUN_S
export M_NPROC="$(nproc)"
export M_CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
export M_KERNEL="$(uname -srm)"
export V_REDIS="$(redis-server --version)"
export V_RUSTC="$(rustc --version)"
export V_GIT="$(git rev-parse --short HEAD)"
export V_DIRTY="$(git status --porcelain 2>/dev/null | wc -l | tr -d ' ')"
export V_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
export ELAPSED_S=$(( END_TS - START_TS ))

python3 - <<'PY'
import json, os

env = os.environ
records = []
with open(env["RECORDS"]) as f:
    for line in f:
        line = line.rstrip("\n")
        if not line:
            continue
        section, mix, pipeline, conns, server, status, path, lg_cmd, srv_cmd = line.split("\t")
        res = None
        if status.startswith("ok"):
            try:
                with open(path) as jf:
                    res = json.load(jf)
            except Exception as e:  # noqa: BLE001
                status = f"failed (unreadable JSON: {e})"
        records.append(dict(section=section, mix=mix, pipeline=int(pipeline), conns=int(conns),
                            server=server, status=status, res=res, lg_cmd=lg_cmd, srv_cmd=srv_cmd,
                            path=path))

LABEL = {
    "credshard-never": "credshard `--fsync never`",
    "credshard-always": "credshard `--fsync always`",
    "redis-off": "redis persistence off",
    "redis-always": "redis `appendfsync always`",
}

def fmt_int(v):
    return f"{v:,.0f}"

def ratio(a, b):
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.2f}×"

def metric(r, k):
    return None if r["res"] is None else r["res"].get(k)

cells = []
by_cell = {}
for r in records:
    key = (r["section"], r["mix"], r["pipeline"], r["conns"])
    if key not in by_cell:
        by_cell[key] = {}
        cells.append(key)
    by_cell[key][r["server"]] = r

# ---- overlay latency charts, one per configuration, beside the document
import re, subprocess, sys

SERVER_ORDER = ("credshard-never", "credshard-always", "redis-off", "redis-always")
CHART_LABEL = {
    "credshard-never": "credshard fsync never",
    "credshard-always": "credshard fsync always",
    "redis-off": "redis persistence off",
    "redis-always": "redis appendfsync always",
}

def chart_name(key):
    section, mix, p, c = key
    mix_slug = "-".join(re.findall(r"[0-9]+", mix)) or re.sub(r"[^a-z0-9]+", "-", mix)
    prefix = "" if section == "pinned" else f"{section}-"
    return f"{prefix}p{p}-c{c}-{mix_slug}.svg"

def make_chart(key):
    """Overlays the latency distributions of the cell's successful runs; returns the chart's
    path relative to the document, or None (and removes a stale chart) if none succeeded."""
    path = os.path.join(env["CHART_DIR"], chart_name(key))
    inputs = []
    for server in SERVER_ORDER:
        r = by_cell[key].get(server)
        if r is None or r["res"] is None:
            continue
        # The plot labels each line with the JSON's "target" (scheme://address), which does not
        # tell fsync never from always: relabel a copy.
        with open(r["path"]) as jf:
            text = jf.read()
        text = re.sub(r'"target":\s*"(?:[^"\\]|\\.)*"',
                      lambda _: '"target": ' + json.dumps(CHART_LABEL[server]), text, count=1)
        stem = os.path.splitext(chart_name(key))[0]
        labelled = os.path.join(env["TMP"], f"chart-{stem}-{server}.json")
        with open(labelled, "w") as jf:
            jf.write(text)
        inputs.append(labelled)
    if inputs:
        section, mix, p, c = key
        title = f"{mix}, pipeline {p}, {c} connections ({section})"
        done = subprocess.run([env["LOADGEN_BIN"], "plot", "--out", path, "--title", title, *inputs],
                              capture_output=True, text=True)
        if done.returncode == 0:
            return os.path.relpath(path, os.path.dirname(env["OUT_DOC"]))
        print(f"compare.sh: plot of {chart_name(key)} failed: {done.stderr.strip()}", file=sys.stderr)
    if os.path.exists(path):
        os.remove(path)
    return None

charts = {key: make_chart(key) for key in cells}

out = []
w = out.append
w("# credshard vs Redis: comparison under identical load")
w("")
w(f"Generated by `bench/compare.sh` on {env['V_DATE']} (whole script: {env['ELAPSED_S']} s, "
  "build included). Re-run with `bash bench/compare.sh`; this file is overwritten.")
w("")
w("Every number below is one run of `credshard-loadgen` with the same settings against four "
  "freshly started servers. Ratios are credshard ÷ Redis: for ops/s above 1 means credshard is "
  "faster; for latency above 1 means credshard is slower. These are single short runs on a small "
  "VM, so differences of ~10% are within run-to-run noise. Each configuration has a chart "
  "overlaying the four runs' latency by percentile (`credshard-loadgen plot`), in "
  f"`{os.path.relpath(env['CHART_DIR'], os.path.dirname(env['OUT_DOC']))}/`.")
w("")
if env["QUICK"] == "1":
    w("**Quick mode (`COMPARE_QUICK=1`): a smoke run of the script with one pinned cell, 1 s runs "
      "and 1,000 keys. The numbers say nothing; see the full run in docs/.**")
    w("")
w("## Machine and versions")
w("")
w(f"- CPUs (`nproc`): {env['M_NPROC']}")
w(f"- CPU model: {env['M_CPU']}")
w(f"- Kernel: {env['M_KERNEL']}")
w(f"- Redis: `{env['V_REDIS']}`")
w(f"- Rust: `{env['V_RUSTC']}`")
dirty = int(env["V_DIRTY"])
w(f"- credshard: commit `{env['V_GIT']}`" + (f" (working tree had {dirty} uncommitted change(s) when built)" if dirty else ""))
w("")
w("## Settings")
w("")
w("- Servers, each freshly started per run on its own port and data dir (a temp dir), stopped by its PID with SIGTERM:")
w("  - credshard `--fsync never` (acknowledged once in the page cache)")
w("  - credshard `--fsync always` (acknowledged once fdatasync'ed)")
w("  - redis-server persistence off: `--save '' --appendonly no`")
w("  - redis-server `--save '' --appendonly yes --appendfsync always`")
w(f"- Loadgen: `--duration {env['DURATION']} --warmup {env['WARMUP']} --keys {env['KEYS']} --value-size {env['VALUE_SIZE']}`, "
  "keys preloaded (the loadgen writes each key once before the warm-up), uniform key distribution, closed loop.")
w("- Mixes `get=90,put=10` and `get=50,put=50`; pipeline 1 and 16; 50 and 1000 connections.")
w("- **Pinned** rows (the machine has 2 CPUs, so server and client share the box): server on CPU 1 "
  "(`taskset -c 1`, credshard `--shards 1`), loadgen on CPU 0 (`taskset -c 0 … --threads 1`).")
w("- **Unpinned** row (50 connections, pipeline 1, get=90,put=10): no taskset, credshard `--shards 2`, "
  "loadgen `--threads 2`; server and client compete for both CPUs.")
w("- ops/s and percentiles are over all operations (gets and puts together) in the measured window.")
w(f"- Time budget: full matrix = {env['FULL_RUNS']} runs × ~{env['PER_RUN_S']} s ≈ {env['FULL_EST_S']} s "
  f"(budget {env['RUN_BUDGET_S']} s for the loadgen runs).")
if env["DROP_1000_P16"] == "yes":
    w("  **The 1000-connection × pipeline-16 cells were dropped** because the full matrix did not fit; "
      f"{env['TOTAL_RUNS']} runs were made.")
else:
    w(f"  The full matrix fit; nothing was dropped ({env['TOTAL_RUNS']} runs).")
w("")

failures = [r for r in records if not r["status"].startswith("ok")]
err_runs = [r for r in records if r["res"] is not None and (r["res"].get("errors") or 0) != 0]
warn_runs = [r for r in records if r["status"].startswith("ok") and r["status"] != "ok"]

SECTION_TITLE = {"pinned": "Pinned: server on CPU 1, loadgen on CPU 0",
                 "unpinned": "Unpinned: no taskset, credshard --shards 2, loadgen --threads 2"}

def cell_title(key):
    section, mix, p, c = key
    return f"{mix}, pipeline {p}, {c} connections"

# Summary tables
w("## Summary (ops/s)")
w("")
for section in ("pinned", "unpinned"):
    keys = [k for k in cells if k[0] == section]
    if not keys:
        continue
    w(f"### {SECTION_TITLE[section]}")
    w("")
    w("| mix | pipeline | conns | credshard never | redis off | ratio | credshard always | redis fsync always | ratio |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in keys:
        d = by_cell[k]
        def ops(s):
            r = d.get(s)
            if r is None:
                return None, "missing"
            v = metric(r, "ops_per_sec")
            return v, (fmt_int(v) if v is not None else "failed")
        a, at = ops("credshard-never"); b, bt = ops("redis-off")
        c, ct = ops("credshard-always"); e, et = ops("redis-always")
        w(f"| {k[1]} | {k[2]} | {k[3]} | {at} | {bt} | {ratio(a, b)} | {ct} | {et} | {ratio(c, e)} |")
    w("")

# Detailed tables
w("## Per configuration")
w("")
w("Each table: ops/s, latency percentiles in µs, and errors, per server; the ratio rows divide "
  "credshard by its Redis counterpart (never vs persistence off, always vs appendfsync always).")
w("")
for section in ("pinned", "unpinned"):
    keys = [k for k in cells if k[0] == section]
    if not keys:
        continue
    w(f"### {SECTION_TITLE[section]}")
    w("")
    for k in keys:
        d = by_cell[k]
        w(f"#### {cell_title(k)} ({section})")
        w("")
        w("| server | ops/s | p50 µs | p99 µs | p99.9 µs | errors |")
        w("|---|---:|---:|---:|---:|---:|")
        def row(s):
            r = d.get(s)
            if r is None or r["res"] is None:
                st = "missing" if r is None else r["status"]
                w(f"| {LABEL[s]} | {st} | – | – | – | – |")
                return
            res = r["res"]
            w(f"| {LABEL[s]} | {fmt_int(res['ops_per_sec'])} | {fmt_int(res['p50_us'])} | "
              f"{fmt_int(res['p99_us'])} | {fmt_int(res['p999_us'])} | {res.get('errors', 0)} |")
        def ratio_row(cs, rs, label):
            a = d.get(cs); b = d.get(rs)
            def m(r, key):
                return None if r is None else metric(r, key)
            w(f"| *{label}* | {ratio(m(a,'ops_per_sec'), m(b,'ops_per_sec'))} | "
              f"{ratio(m(a,'p50_us'), m(b,'p50_us'))} | {ratio(m(a,'p99_us'), m(b,'p99_us'))} | "
              f"{ratio(m(a,'p999_us'), m(b,'p999_us'))} | |")
        row("credshard-never"); row("redis-off")
        ratio_row("credshard-never", "redis-off", "ratio never / persistence off")
        row("credshard-always"); row("redis-always")
        ratio_row("credshard-always", "redis-always", "ratio always / appendfsync always")
        w("")
        if charts.get(k):
            w(f"![Latency by percentile, {cell_title(k)} ({section}): credshard never/always, "
              f"redis off/always]({charts[k]})")
        else:
            w("(No latency chart: no run of this configuration succeeded.)")
        w("")
        w("Commands (ports were picked at start; paths are under the script's temp dir):")
        w("")
        w("```")
        for s in ("credshard-never", "redis-off", "credshard-always", "redis-always"):
            r = d.get(s)
            if r is None:
                continue
            w(f"# {s}: {r['status']}")
            w(f"server:  {r['srv_cmd']}")
            w(f"loadgen: {r['lg_cmd'] or '(not run)'}")
        w("```")
        w("")

w("## redis-benchmark cross-check")
w("")
w("`bench/loadgen_check.sh`, run by this script: redis-benchmark and the loadgen in alternation against "
  "one persistence-off redis-server, with the server's own count beside each.")
w("")
with open(env["BENCH_OUT"]) as f:
    for line in f:
        w(line.rstrip("\n"))
w("")
w("## Run health")
w("")
w(f"- Failed runs: {len(failures)}" + ("" if not failures else ": " + "; ".join(
    f"[{r['section']}] {r['server']} {r['mix']} p{r['pipeline']} c{r['conns']}: {r['status']}" for r in failures)))
w(f"- Runs with loadgen errors > 0: {len(err_runs)}" + ("" if not err_runs else ": " + "; ".join(
    f"[{r['section']}] {r['server']} {r['mix']} p{r['pipeline']} c{r['conns']}: {r['res']['errors']} ({r['res'].get('errors_by_kind')})" for r in err_runs)))
if warn_runs:
    w("- Warnings: " + "; ".join(f"{r['server']} {r['mix']} p{r['pipeline']} c{r['conns']}: {r['status']}" for r in warn_runs))
w(f"- Servers left running after the script: {env['LEFTOVER']}")
w("")

with open(env["OUT_DOC"], "w") as f:
    f.write("\n".join(out))
PY

log "wrote $OUT_DOC (total ${ELAPSED_S}s)"

# The full run also lands in docs/performance.md, between the markers, headings one level down.
if [ "$QUICK" != 1 ]; then
    python3 bench/splice_compare.py "$OUT_DOC" "$OUT_DIR/performance.md"
    log "spliced into $OUT_DIR/performance.md"
fi
