#!/usr/bin/env bash
# What masking costs end to end: the same result read through Weir with masking on and with
# masking off (`[masking] enabled = false`: the zero-copy path), and directly, in one run
# against one throwaway PostgreSQL cluster.
#
# The table holds a million rows of (id, name, email, card_number, created, note): two
# columns masked by name (email, card_number), two text columns scanned by content. Each
# query is read with psql (-At, to /dev/null) ROUNDS times per mode, modes alternating; the
# table gives the median wall time and the overhead of masking on over masking off.
#
# Usage: bench/masking.sh            ROUNDS=7 bench/masking.sh
# Knobs: ROUNDS (default 5), ROWS (default 1000000), WEIR_BIN (default target/release/weir),
#        RESULTS_FILE (default bench/results/masking-latest.md).
# Needs: PostgreSQL server binaries (pg_config --bindir), python3 (free ports). As root the
# server runs as the `postgres` OS user.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
ROWS=${ROWS:-1000000}
die() { echo "masking.sh: $*" >&2; exit 1; }
for v in ROUNDS ROWS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
if [ -n "${WEIR_BIN:-}" ] && [[ $WEIR_BIN == */* ]] && [[ $WEIR_BIN != /* ]]; then
  WEIR_BIN=$PWD/$WEIR_BIN
fi
cd "$(dirname "$0")/.."
RESULTS_FILE=${RESULTS_FILE:-bench/results/masking-latest.md}

BINDIR=$(pg_config --bindir 2>/dev/null || true)
if [ ! -x "$BINDIR/initdb" ]; then
  BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
[ -x "$BINDIR/initdb" ] || die "PostgreSQL server binaries not found (pg_config --bindir)"
if [ -z "${WEIR_BIN:-}" ]; then
  WEIR_BIN=target/release/weir
  [ -x "$WEIR_BIN" ] || cargo build --release -p weir
fi
[ -x "$WEIR_BIN" ] || die "$WEIR_BIN is not an executable file"

WORK=$(mktemp -d /tmp/weir-mask-bench.XXXXXX)
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user"
  chown postgres "$WORK"
  AS_PG=(runuser -u postgres --)
fi
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -f "$WORK/data/postmaster.pid" ]; then
    "${AS_PG[@]}" "$BINDIR/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  [ "$rc" = 0 ] || { echo "masking.sh: failed (exit $rc); logs:" >&2; tail -n 20 "$WORK"/*.log >&2 || true; }
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)
ON_PORT=$(free_port)
OFF_PORT=$(free_port)
PG_PASSWORD=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
export PGHOST=127.0.0.1 PGSSLMODE=disable

wait_port() {
  for _ in $(seq 100); do
    "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$1" && return 0
    sleep 0.1
  done
  return 1
}

echo "== PostgreSQL on 127.0.0.1:$PG_PORT"
printf '%s\n' "$PG_PASSWORD" >"$WORK/pgpass.txt"
chmod 600 "$WORK/pgpass.txt"
[ ${#AS_PG[@]} -eq 0 ] || chown postgres "$WORK/pgpass.txt"
"${AS_PG[@]}" "$BINDIR/initdb" -D "$WORK/data" -U postgres --auth=scram-sha-256 \
  --pwfile="$WORK/pgpass.txt" --no-sync >"$WORK/initdb.log" 2>&1 || die "initdb failed"
cat >>"$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
shared_buffers = 256MB
CONF
"${AS_PG[@]}" "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start >/dev/null
direct() { PGPORT=$PG_PORT PGUSER=postgres PGPASSWORD=$PG_PASSWORD PGDATABASE=postgres "$@"; }
echo "== $ROWS rows"
direct "$BINDIR/psql" -q -X -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE people (id bigint PRIMARY KEY, name text, email text, card_number text,
                     created timestamptz, note text);
INSERT INTO people
SELECT g, 'Person ' || g, 'person' || g || '@example.com',
       '4111 1111 1111 ' || lpad((g % 10000)::text, 4, '0'),
       timestamptz '2024-01-01' + g * interval '1 minute',
       'order ' || g || ' shipped to the warehouse'
FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE people;
SQL

start_weir() { # NAME PORT MASKING
  cat >"$WORK/$1.toml" <<TOML
[gateway]
postgres_listen = "127.0.0.1:$2"
store = "sqlite://$1.db"
[masking]
enabled = $3
[[identity.static]]
name = "bench"
kind = "human"
token = "bench-token"
[[target]]
name = "bench"
engine = "postgres"
environment = "development"
upstream = "127.0.0.1:$PG_PORT"
database = "postgres"
user = "postgres"
password_file = "pgpass.txt"
TOML
  RUST_LOG=warn "$WEIR_BIN" serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  wait_port "$2" || die "weir ($1) did not start"
}
start_weir on "$ON_PORT" true
start_weir off "$OFF_PORT" false

run() { # MODE QUERY -> milliseconds
  local port user pw db
  case $1 in
    direct) port=$PG_PORT user=postgres pw=$PG_PASSWORD db=postgres ;;
    masking-off) port=$OFF_PORT user=bench pw=bench-token db=bench ;;
    masking-on) port=$ON_PORT user=bench pw=bench-token db=bench ;;
  esac
  local t0 t1
  t0=$(date +%s%N)
  PGPORT=$port PGUSER=$user PGPASSWORD=$pw PGDATABASE=$db "$BINDIR/psql" -X -At -v ON_ERROR_STOP=1 -c "$2" >/dev/null
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000))
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

# A masked row, to show what is measured.
echo "== a row through masking-on:"
PGPORT=$ON_PORT PGUSER=bench PGPASSWORD=bench-token PGDATABASE=bench "$BINDIR/psql" -X -At -c "SELECT * FROM people WHERE id = 42"

TABLE="| rows | direct (ms) | Weir, masking off (ms) | Weir, masking on (ms) | masking overhead |
|---:|---:|---:|---:|---:|"
for n in 10000 "$ROWS"; do
  q="SELECT * FROM people WHERE id <= $n"
  declare -A times=()
  for mode in direct masking-off masking-on; do run "$mode" "$q" >/dev/null; done # warm
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="direct masking-off masking-on"; else order="masking-on masking-off direct"; fi
    for mode in $order; do times[$mode]+="$(run "$mode" "$q") "; done
  done
  d=$(echo "${times[direct]}" | tr ' ' '\n' | grep . | median)
  off=$(echo "${times[masking-off]}" | tr ' ' '\n' | grep . | median)
  on=$(echo "${times[masking-on]}" | tr ' ' '\n' | grep . | median)
  pct=$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%+.1f%%", (a - b) * 100 / b }')
  echo "== $n rows: direct ${times[direct]}| off ${times[masking-off]}| on ${times[masking-on]}"
  TABLE+="
| $n | $d | $off | $on | $pct |"
  unset times
done
{
  echo "Masking end to end: psql reads SELECT * (6 columns, 2 masked by name, 2 text columns scanned by content); median of $ROUNDS rounds, modes alternating; $(nproc) cores; $(date -u +%FT%RZ); work tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo
  echo "$TABLE"
} | tee "$RESULTS_FILE"
echo "(written to $RESULTS_FILE)"
