#!/usr/bin/env bash
# pgbench side by side, in one run on one machine, against one throwaway PostgreSQL cluster:
#
#   direct     pgbench -> PostgreSQL
#   pgbouncer  pgbench -> pgbouncer (pool_mode = transaction) -> PostgreSQL
#   weir       pgbench -> Weir -> PostgreSQL
#
# Three workloads, select-only (-S), TPC-B-like (the default script) and range-update (one
# UPDATE of one account by a range, `aid >= :aid AND aid < :aid + 1`: a write no analysis can
# prove to touch one row, so Weir's bulk-write bound brackets it), each run ROUNDS times per
# mode. The order of the modes alternates between rounds (odd rounds direct, pgbouncer, weir; even
# rounds the reverse) so that warm-up and drift do not always favour the same mode. The table at
# the end gives, per workload and mode, the mean TPS, the mean average latency and TPS relative to
# direct; it is also written to bench/results/latest.md.
#
# Every mode authenticates with a password over TCP on 127.0.0.1 (SCRAM-SHA-256 for direct and
# pgbouncer, Weir's own token for Weir). TLS is off on every path (sslmode=disable), so what is
# compared is the proxies alone.
#
# Usage (from anywhere; paths below are relative to the repository root):
#   bench/pgbench.sh
#   DURATION=30 ROUNDS=3 PROTOCOL=extended bench/pgbench.sh
#   WEIR_BIN=/path/to/weir bench/pgbench.sh
#
# Knobs (environment):
#   DURATION      seconds per pgbench run                      (default 20)
#   ROUNDS        runs per mode and workload                   (default 2)
#   PROTOCOL      pgbench -M: simple | extended | prepared     (default simple)
#   CLIENTS       pgbench -c                                   (default 8)
#   THREADS       pgbench -j                                   (default 2)
#   SCALE         pgbench -i -s                                (default 10)
#   WEIR_BIN      Weir binary. Unset: target/release/weir, built with cargo if missing.
#                 Set to something that is not executable: Weir is reported as "not run".
#   RESULTS_FILE  where the table is written                   (default bench/results/latest.md)
#   WEIR_WORKERS  [gateway] workers (default: Weir's, one per CPU)
#   WEIR_ENVIRONMENT  the Weir target's environment, so the default policy applies as there (default production)
#   WEIR_LOG      Weir's RUST_LOG (default warn; weir_proxy::audit=debug shows group-commit figures)
#   WEIR_STORE    Weir's [gateway] store (default sqlite://weir.db, beside the config in the work dir).
#                 sqlite:///dev/shm/... puts the audit trail on tmpfs, where fsync costs nothing:
#                 what Weir's write-ahead audit costs apart from the disk's flush latency.
#   WORKLOADS     which workloads, in order                    (default "select-only tpcb-like";
#                 range-update is run only when named)
#   WEIR_EXTRA_CONFIG  TOML appended to Weir's config, e.g. $'[policy]\nbulk_write_rows = 0'
#                 to measure the built-in bulk-write bound against no bound
#
# Besides TPS and latency, the table gives Weir's CPU time per transaction (all its threads, from
# /proc: steadier than TPS on a noisy machine) and the flush latency of the filesystem that holds
# Weir's store (600-byte pwrite + fdatasync, 300 times, before the runs): with write-ahead audit
# every statement waits for at least one such flush, so it bounds what Weir can do there.
#
# Exits non-zero if any pgbench run exits non-zero or reports failed transactions; the logs of
# the run are then kept (their directory is printed). Weir failing to start is not fatal: the
# table still shows direct and pgbouncer, with a line saying why Weir is missing.
#
# Needs: PostgreSQL server binaries (pg_config --bindir), pgbouncer (apt-get installs it when run
# as root), python3 (to pick free ports). PostgreSQL and pgbouncer refuse to run as root, so as
# root they run as the `postgres` OS user.
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
PROTOCOL=${PROTOCOL:-simple}
CLIENTS=${CLIENTS:-8}
read -r -a WORKLOADS <<<"${WORKLOADS:-select-only tpcb-like}"
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}

die() { echo "pgbench.sh: $*" >&2; exit 1; }

case $PROTOCOL in simple | extended | prepared) ;; *) die "PROTOCOL must be simple, extended or prepared (got '$PROTOCOL')" ;; esac
for w in "${WORKLOADS[@]}"; do
  case $w in select-only | tpcb-like | range-update) ;; *) die "WORKLOADS: unknown workload '$w' (select-only, tpcb-like, range-update)" ;; esac
done
[ ${#WORKLOADS[@]} -gt 0 ] || die "WORKLOADS is empty"
for v in DURATION ROUNDS CLIENTS THREADS SCALE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done

# A WEIR_BIN given by the caller is taken relative to the caller's directory; then work from the
# repository root, where the default binary and bench/results live.
if [ -n "${WEIR_BIN:-}" ] && [[ $WEIR_BIN == */* ]] && [[ $WEIR_BIN != /* ]]; then
  WEIR_BIN=$PWD/$WEIR_BIN
fi
cd "$(dirname "$0")/.."
RESULTS_FILE=${RESULTS_FILE:-bench/results/latest.md}

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
BINDIR=$(pg_config --bindir 2>/dev/null || true)
if [ ! -x "$BINDIR/initdb" ]; then # pg_config may come from a client-only package
  BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
[ -x "$BINDIR/initdb" ] && [ -x "$BINDIR/pgbench" ] || die "PostgreSQL server binaries not found (pg_config --bindir)"
command -v python3 >/dev/null || die "python3 is needed to pick free ports"

PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
if [ ! -x "$PGBOUNCER" ]; then
  [ "$(id -u)" = 0 ] || die "pgbouncer is not installed (apt-get install pgbouncer)"
  echo "== installing pgbouncer"
  apt-get install -y -qq pgbouncer >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null; }
  PGBOUNCER=/usr/sbin/pgbouncer
fi

# BOUNCER_NOTE / WEIR_NOTE say why that mode is not in the table (empty = it is).
BOUNCER_NOTE=
WEIR_NOTE=
if [ -z "${WEIR_BIN:-}" ]; then
  WEIR_BIN=target/release/weir
  if [ ! -x "$WEIR_BIN" ]; then
    echo "== building $WEIR_BIN"
    cargo build --release -p weir || WEIR_NOTE="not run (cargo build --release -p weir failed)"
  fi
elif [[ $WEIR_BIN != */* ]]; then # a bare name: look it up on PATH
  WEIR_BIN=$(command -v "$WEIR_BIN" || echo "$WEIR_BIN")
fi
if [ -z "$WEIR_NOTE" ] && [ ! -x "$WEIR_BIN" ]; then
  WEIR_NOTE="not run ($WEIR_BIN is not an executable file)"
fi

# ---------------------------------------------------------------------------------------------
# Scratch directory and cleanup
# ---------------------------------------------------------------------------------------------
# Everything lives in one temp dir: the cluster, its unix socket, the pgbouncer and Weir configs,
# Weir's store, and all logs. As root it is owned by `postgres` (root can still write to it).
WORK=$(mktemp -d /tmp/weir-bench.XXXXXX)
AS_PG=() # command prefix for PostgreSQL and pgbouncer
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user to run the server as"
  chown postgres "$WORK"
  AS_PG=(runuser -u postgres --)
fi

WEIR_PID=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$WEIR_PID" ]; then
    kill "$WEIR_PID" 2>/dev/null || true
    wait "$WEIR_PID" 2>/dev/null || true
  fi
  if [ -f "$WORK/pgbouncer.pid" ]; then
    local pid
    pid=$(cat "$WORK/pgbouncer.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -f "$WORK/data/postmaster.pid" ]; then
    "${AS_PG[@]}" "$BINDIR/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ "$rc" != 0 ] && compgen -G "$WORK/*.log" >/dev/null; then
    local keep
    keep=$(mktemp -d /tmp/weir-bench-logs.XXXXXX)
    cp "$WORK"/*.log "$keep"/
    echo "pgbench.sh: failed (exit $rc); logs kept in $keep" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
WEIR_PORT=$(free_port)
PG_PASSWORD=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')

# Client connections: always TCP to 127.0.0.1 without TLS; port, user, password and database per
# mode are set by as_client.
export PGHOST=127.0.0.1 PGSSLMODE=disable
unset PGSERVICE PGOPTIONS PGHOSTADDR PGSSLCERT PGSSLKEY 2>/dev/null || true

# as_client MODE CMD...: run a libpq client (psql, pgbench) connected to MODE.
as_client() {
  local mode=$1
  shift
  case $mode in
    direct) PGPORT=$PG_PORT PGUSER=postgres PGPASSWORD=$PG_PASSWORD PGDATABASE=postgres "$@" ;;
    pgbouncer) PGPORT=$BOUNCER_PORT PGUSER=postgres PGPASSWORD=$PG_PASSWORD PGDATABASE=postgres "$@" ;;
    weir) PGPORT=$WEIR_PORT PGUSER=bench PGPASSWORD=bench-token PGDATABASE=bench "$@" ;;
    *) die "unknown mode $mode" ;;
  esac
}

# wait_port PORT SECONDS [PID]: wait until something answers the PostgreSQL protocol on PORT;
# give up early if PID (the process that should be listening) has exited.
wait_port() {
  local port=$1 secs=$2 pid=${3:-}
  for _ in $(seq $((secs * 10))); do
    "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# (a) PostgreSQL: a fresh cluster with SCRAM password authentication
# ---------------------------------------------------------------------------------------------
echo "== PostgreSQL: $("$BINDIR/postgres" --version) on 127.0.0.1:$PG_PORT, data in $WORK/data"
printf '%s\n' "$PG_PASSWORD" >"$WORK/pgpass.txt"
chmod 600 "$WORK/pgpass.txt"
[ ${#AS_PG[@]} -eq 0 ] || chown postgres "$WORK/pgpass.txt"
# --no-sync only skips initdb's final fsync of the new files; the server runs with fsync on.
"${AS_PG[@]}" "$BINDIR/initdb" -D "$WORK/data" -U postgres --auth=scram-sha-256 \
  --pwfile="$WORK/pgpass.txt" --no-sync >"$WORK/initdb.log" 2>&1 ||
  { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
# Only these settings differ from the defaults (durability settings are left alone).
cat >>"$WORK/data/postgresql.conf" <<CONF

# --- bench/pgbench.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 100
shared_buffers = 128MB
CONF
"${AS_PG[@]}" "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 start >/dev/null ||
  { cat "$WORK/postgres.log" >&2; die "PostgreSQL did not start"; }

echo "== pgbench -i -s $SCALE (direct)"
as_client direct "$BINDIR/pgbench" -i -s "$SCALE" -q >"$WORK/pgbench-init.log" 2>&1 ||
  { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
tail -n 1 "$WORK/pgbench-init.log"

# ---------------------------------------------------------------------------------------------
# (b) pgbouncer, transaction pooling, SCRAM for clients (auth_file holds the plain password, which
#     pgbouncer also uses for SCRAM to the server)
# ---------------------------------------------------------------------------------------------
BOUNCER_VERSION=$("$PGBOUNCER" --version | head -n 1 | awk '{print $2}')
POOL_SIZE=$((CLIENTS > 8 ? CLIENTS : 8))
# -M prepared needs protocol-level prepared statement support in transaction mode, which
# pgbouncer has from 1.21 on (max_prepared_statements). Older ones fail every transaction with
# "prepared statement ... does not exist", so pgbouncer is left out and the table says why.
BOUNCER_EXTRA=
if [ "$PROTOCOL" = prepared ]; then
  if [ "$(printf '%s\n' 1.21 "$BOUNCER_VERSION" | sort -V | head -n 1)" = 1.21 ]; then
    BOUNCER_EXTRA="max_prepared_statements = 200"
  else
    BOUNCER_NOTE="not run (-M prepared needs pgbouncer >= 1.21 in transaction mode; this is $BOUNCER_VERSION)"
  fi
fi
cat >"$WORK/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres user=postgres password=$PG_PASSWORD

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir = $WORK
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 100
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
$BOUNCER_EXTRA
INI
printf '"postgres" "%s"\n' "$PG_PASSWORD" >"$WORK/userlist.txt"
chmod 600 "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
[ ${#AS_PG[@]} -eq 0 ] || chown postgres "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
"${AS_PG[@]}" "$PGBOUNCER" -d "$WORK/pgbouncer.ini" >/dev/null 2>&1 ||
  { cat "$WORK/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer did not start"; }
wait_port "$BOUNCER_PORT" 10 || { cat "$WORK/pgbouncer.log" >&2; die "pgbouncer is not answering on $BOUNCER_PORT"; }
echo "== pgbouncer $BOUNCER_VERSION (pool_mode=transaction, pool size $POOL_SIZE) on 127.0.0.1:$BOUNCER_PORT"

# ---------------------------------------------------------------------------------------------
# (c) Weir. Not fatal if it cannot start: WEIR_NOTE then says why, with the log kept.
# ---------------------------------------------------------------------------------------------
if [ -z "$WEIR_NOTE" ]; then
  cat >"$WORK/weir.toml" <<TOML
[gateway]
postgres_listen = "127.0.0.1:$WEIR_PORT"
store = "${WEIR_STORE:-sqlite://weir.db}"  # relative to this file's directory
${WEIR_WORKERS:+workers = $WEIR_WORKERS}

[[identity.static]]
name = "bench"
kind = "service"
groups = ["bench"]
token = "bench-token"

[[target]]
name = "bench"                      # the database name clients use
engine = "postgres"
environment = "${WEIR_ENVIRONMENT:-production}"
upstream = "127.0.0.1:$PG_PORT"
database = "postgres"               # where pgbench -i put its tables
user = "postgres"
password_env = "WEIR_BENCH_PGPASSWORD"
${WEIR_EXTRA_CONFIG:-}
TOML
  WEIR_BENCH_PGPASSWORD=$PG_PASSWORD RUST_LOG=${WEIR_LOG:-warn} \
    "$WEIR_BIN" serve --config "$WORK/weir.toml" >"$WORK/weir.log" 2>&1 &
  WEIR_PID=$!
  # Ready = answers on its port within 30 s, and a query through it reaches the pgbench tables.
  if wait_port "$WEIR_PORT" 30 "$WEIR_PID" &&
    as_client weir "$BINDIR/psql" -XAtq -c 'select count(*) from pgbench_branches' >>"$WORK/weir.log" 2>&1; then
    echo "== Weir ($WEIR_BIN, $("$WEIR_BIN" --version 2>/dev/null || echo 'version unknown')) on 127.0.0.1:$WEIR_PORT"
  else
    kill "$WEIR_PID" 2>/dev/null || true
    wait "$WEIR_PID" 2>/dev/null || true
    WEIR_PID=
    # The temp dir goes away at exit: keep the log where the note can point to it.
    kept=$(mktemp --suffix=.log /tmp/weir-bench-weir.XXXXXX)
    cp "$WORK/weir.log" "$kept"
    WEIR_NOTE="failed to start (see $kept)"
  fi
fi
[ -z "$WEIR_NOTE" ] || echo "weir: $WEIR_NOTE"
[ -z "$BOUNCER_NOTE" ] || echo "pgbouncer: $BOUNCER_NOTE"

MODES=(direct)
[ -n "$BOUNCER_NOTE" ] || MODES+=(pgbouncer)
[ -n "$WEIR_NOTE" ] || MODES+=(weir)

# Sanity: the pgbench tables are reachable through every mode before any timing starts.
for mode in "${MODES[@]}"; do
  n=$(as_client "$mode" "$BINDIR/psql" -XAtq -c 'select count(*) from pgbench_branches' 2>&1) ||
    die "$mode: 'select count(*) from pgbench_branches' failed: $n"
  [ "$n" = "$SCALE" ] || die "$mode: expected $SCALE rows in pgbench_branches, got '$n'"
done

# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------
declare -A TPS LAT CPU # "mode,workload" -> space-separated per-round figures
CLK_TCK=$(getconf CLK_TCK)

# Weir's CPU time so far, all threads, in clock ticks (user + system).
weir_cpu_ticks() {
  awk '{ print $14 + $15 }' "/proc/$WEIR_PID/stat" 2>/dev/null || echo 0
}

# The flush latency where Weir's store lives: 300 x (600-byte pwrite + fdatasync) into a
# preallocated file, median and mean in microseconds.
STORE_DIR=$WORK
case ${WEIR_STORE:-} in sqlite://*/*) d=${WEIR_STORE#sqlite://}; d=${d%/*}; [ -z "$d" ] || [[ $d != /* ]] || STORE_DIR=$d ;; esac
FLUSH=$(python3 - "$STORE_DIR" <<'PY' 2>/dev/null || echo "not measured"
import os, sys, time
path = os.path.join(sys.argv[1], ".weir-bench-flush")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
try:
    os.write(fd, b"\0" * (1 << 20)); os.fsync(fd)
    ts = []
    for i in range(300):
        os.pwrite(fd, b"x" * 600, (i * 600) % (1 << 20))
        t = time.perf_counter(); os.fdatasync(fd); ts.append(time.perf_counter() - t)
    ts.sort()
    print("p50 %.0f us, mean %.0f us" % (ts[150] * 1e6, sum(ts) / len(ts) * 1e6))
finally:
    os.close(fd); os.unlink(path)
PY
)
echo "== flush latency in $STORE_DIR: $FLUSH"

# run_pgbench MODE WORKLOAD ROUND
run_pgbench() {
  local mode=$1 workload=$2 round=$3
  local log="$WORK/pgbench-$workload-$mode-$round.log"
  local args=(-n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$PROTOCOL")
  [ "$workload" = select-only ] && args+=(-S)
  if [ "$workload" = range-update ]; then
    printf '%s\n' "\\set aid random(1, $((100000 * SCALE)))" \
      'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid >= :aid AND aid < :aid + 1;' \
      >"$WORK/range-update.sql"
    chmod a+r "$WORK/range-update.sql"
    args+=(-f "$WORK/range-update.sql")
  fi

  # What pgbench itself does before a run unless -n: vacuum the small tables and empty the history,
  # so every run starts from the same state. Done directly, so it costs no mode anything.
  as_client direct "$BINDIR/psql" -XqAt -v ON_ERROR_STOP=1 \
    -c 'vacuum pgbench_branches' -c 'vacuum pgbench_tellers' -c 'truncate pgbench_history' >/dev/null

  # pgbench exits non-zero when a client aborts (its "failed transactions" count stays 0 then).
  local rc=0 cpu_before=0
  [ "$mode" != weir ] || cpu_before=$(weir_cpu_ticks)
  as_client "$mode" "$BINDIR/pgbench" "${args[@]}" >"$log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 30 "$log" >&2
    die "$mode/$workload round $round: pgbench exited with status $rc"
  fi
  local failed tps lat
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$log")
  if [ -n "$failed" ] && [ "$failed" != 0 ]; then
    cat "$log" >&2
    die "$mode/$workload round $round: $failed failed transactions"
  fi
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$log")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' "$log")
  if [ -z "$tps" ] || [ -z "$lat" ]; then
    cat "$log" >&2
    die "$mode/$workload round $round: no 'tps = ... (without initial connection time)' or 'latency average' line"
  fi
  local cpu=""
  if [ "$mode" = weir ]; then
    local ticks txns
    ticks=$(($(weir_cpu_ticks) - cpu_before))
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log")
    if [ -n "$txns" ] && [ "$txns" -gt 0 ]; then
      cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
      CPU[$mode,$workload]="${CPU[$mode,$workload]:-} $cpu"
    fi
  fi
  printf '   round %d  %-10s %10.0f tps  %8.3f ms%s\n' "$round" "$mode" "$tps" "$lat" "${cpu:+  $cpu us cpu/txn}"
  TPS[$mode,$workload]="${TPS[$mode,$workload]:-} $tps"
  LAT[$mode,$workload]="${LAT[$mode,$workload]:-} $lat"
}

for workload in "${WORKLOADS[@]}"; do
  echo "== $workload: -c $CLIENTS -j $THREADS -T $DURATION -M $PROTOCOL, $ROUNDS round(s)"
  for round in $(seq "$ROUNDS"); do
    order=("${MODES[@]}")
    if [ $((round % 2)) = 0 ]; then # even rounds: reverse order
      order=()
      for ((i = ${#MODES[@]} - 1; i >= 0; i--)); do order+=("${MODES[$i]}"); done
    fi
    for mode in "${order[@]}"; do run_pgbench "$mode" "$workload" "$round"; done
  done
done

# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
mean() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.6f", s / NF }' <<<"$1"; }

WEIR_DESC="weir not run"
[ -n "$WEIR_NOTE" ] || WEIR_DESC="$("$WEIR_BIN" --version 2>/dev/null || echo weir)"
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || GIT_REV="$GIT_REV+dirty"

mkdir -p "$(dirname "$RESULTS_FILE")"
{
  echo "pgbench $CLIENTS clients, $THREADS threads, -M $PROTOCOL, scale $SCALE, ${DURATION}s x $ROUNDS round(s) per mode, alternating order; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}'), pgbouncer $BOUNCER_VERSION (transaction pooling), $WEIR_DESC; work tree at $GIT_REV. TPS excludes connection time; latency is pgbench's average; both are means over rounds."
  echo "Weir's store: ${WEIR_STORE:-sqlite://weir.db in the work dir}; flush latency there (600-byte pwrite + fdatasync): $FLUSH."
  echo
  echo "| workload | mode | TPS | latency avg (ms) | TPS vs direct | Weir CPU per txn (µs) |"
  echo "|---|---|---:|---:|---:|---:|"
  for workload in "${WORKLOADS[@]}"; do
    direct_tps=$(mean "${TPS[direct,$workload]}")
    for mode in direct pgbouncer weir; do
      if [ -z "${TPS[$mode,$workload]:-}" ]; then
        echo "| $workload | $mode | not run | – | – | – |"
        continue
      fi
      t=$(mean "${TPS[$mode,$workload]}")
      l=$(mean "${LAT[$mode,$workload]}")
      c="–"
      [ -z "${CPU[$mode,$workload]:-}" ] || c=$(printf '%.0f' "$(mean "${CPU[$mode,$workload]}")")
      printf '| %s | %s | %.0f | %.3f | %.2fx | %s |\n' "$workload" "$mode" "$t" "$l" \
        "$(awk -v a="$t" -v b="$direct_tps" 'BEGIN { print a / b }')" "$c"
    done
  done
  if [ -n "$BOUNCER_NOTE$WEIR_NOTE" ]; then echo; fi
  if [ -n "$BOUNCER_NOTE" ]; then echo "pgbouncer: $BOUNCER_NOTE"; fi
  if [ -n "$WEIR_NOTE" ]; then echo "weir: $WEIR_NOTE"; fi
} >"$WORK/table.md"
echo
cat "$WORK/table.md"
cp "$WORK/table.md" "$RESULTS_FILE"
echo
echo "(written to $RESULTS_FILE)"
