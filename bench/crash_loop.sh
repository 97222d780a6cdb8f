#!/usr/bin/env bash
# Runs the SIGKILL crash test with 200 kills (the test suite runs 20): start `credshard serve`,
# write from 4 connections, kill -9 mid-stream, restart, check every acknowledged write.
set -euo pipefail
cd "$(dirname "$0")/.."
CREDSHARD_CRASH_KILLS="${1:-200}" cargo test --release -p credshard-engine --test crash -- --nocapture
