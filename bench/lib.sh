# Sourced by bench scripts that compare credshard builds given as arguments:
#   source "$(dirname "$0")/lib.sh" NAME "$@"
# Sets ROOT (the repository), L (the release loadgen), BUILDS (the arguments, or this tree's
# release build), TMP (a fresh temp dir named after NAME, removed on exit) and PIDS (every pid
# added is killed on exit); defines free_port.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
L="$ROOT/target/release/credshard-loadgen"
BUILDS=("${@:2}")
[ ${#BUILDS[@]} -gt 0 ] || BUILDS=("$ROOT/target/release/credshard")
TMP="$(mktemp -d -t "$1.XXXXXX")"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
