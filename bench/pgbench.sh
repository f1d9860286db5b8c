#!/usr/bin/env bash
# Side-by-side pgbench: the same throwaway cluster reached (a) directly, (b) through pgbouncer in
# transaction mode, (c) through Weir. Select-only and TPC-B-like, 8 clients, modes in
# alternating order each round. Prints TPS and average latency per mode and the ratio to direct,
# and writes the table to bench/results/latest.md.
#
#   bench/pgbench.sh                      # DURATION=20 ROUNDS=2 PROTOCOL=simple CLIENTS=8
#   WEIR_BIN=target/release/weir DURATION=30 ROUNDS=3 bench/pgbench.sh
#
# TLS is off on every path (sslmode=disable), so the comparison is of the proxies alone.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
PROTOCOL=${PROTOCOL:-simple}
CLIENTS=${CLIENTS:-8}
SCALE=${SCALE:-10}

if [ -z "${WEIR_BIN:-}" ]; then
  WEIR_BIN=target/release/weir
  [ -x "$WEIR_BIN" ] || cargo build --release -p weir
fi
BINDIR=${WEIR_PG_BINDIR:-$(pg_config --bindir 2>/dev/null || true)}
[ -x "$BINDIR/initdb" ] || BINDIR=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
if [ ! -x "$PGBOUNCER" ]; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq pgbouncer >/dev/null; else echo "pgbouncer is not installed" >&2; exit 1; fi
fi

WORK=$(mktemp -d /tmp/weir-bench.XXXXXX)
RUN_AS=()
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; RUN_AS=(runuser -u postgres --); fi
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/pgbouncer.pid" ] && kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null || true
  [ -d "$WORK/data" ] && "${RUN_AS[@]}" "$BINDIR/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); WEIR_PORT=$(free_port)
PASSWORD=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')

echo "== throwaway cluster on 127.0.0.1:$PG_PORT ($("$BINDIR/postgres" --version))"
echo "$PASSWORD" > "$WORK/pw"; chmod 600 "$WORK/pw"; [ ${#RUN_AS[@]} -gt 0 ] && chown postgres "$WORK/pw"
"${RUN_AS[@]}" "$BINDIR/initdb" -D "$WORK/data" -U postgres --auth=scram-sha-256 --pwfile="$WORK/pw" --no-sync >/dev/null
"${RUN_AS[@]}" "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w \
  -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=128MB" start >/dev/null
export PGPASSWORD=$PASSWORD PGSSLMODE=disable
"$BINDIR/pgbench" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres 2>&1 | tail -n 1

cat > "$WORK/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$PG_PORT user=postgres password=$PASSWORD
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
auth_type = plain
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $CLIENTS
max_client_conn = 100
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
INI
echo "\"postgres\" \"$PASSWORD\"" > "$WORK/userlist.txt"
[ ${#RUN_AS[@]} -gt 0 ] && chown postgres "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
"${RUN_AS[@]}" "$PGBOUNCER" -d "$WORK/pgbouncer.ini"
echo "== pgbouncer $("$PGBOUNCER" --version | head -n 1 | awk '{print $2}') (transaction mode) on 127.0.0.1:$BOUNCER_PORT"

WEIR_OK=0
if [ -x "$WEIR_BIN" ]; then
  cat > "$WORK/weir.toml" <<TOML
[gateway]
postgres_listen = "127.0.0.1:$WEIR_PORT"
store = "sqlite://weir.db"

[[identity.static]]
name = "bench"
kind = "service"
groups = ["bench"]
token = "bench-token"

[[target]]
name = "bench"
engine = "postgres"
environment = "development"
upstream = "127.0.0.1:$PG_PORT"
database = "postgres"
user = "postgres"
password_env = "WEIR_BENCH_PGPASSWORD"
TOML
  WEIR_BENCH_PGPASSWORD=$PASSWORD RUST_LOG=warn "$WEIR_BIN" serve --config "$WORK/weir.toml" 2>"$WORK/weir.log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    if "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$WEIR_PORT"; then WEIR_OK=1; break; fi
    sleep 0.1
  done
  [ "$WEIR_OK" = 1 ] && echo "== weir ($WEIR_BIN) on 127.0.0.1:$WEIR_PORT" || echo "weir: failed to start (see $WORK/weir.log)"
else
  echo "weir: not run ($WEIR_BIN is not executable)"
fi

declare -A TPS LAT
run() { # mode workload round
  local mode=$1 workload=$2 port user pass db
  case $mode in
    direct) port=$PG_PORT; user=postgres; pass=$PASSWORD; db=postgres ;;
    pgbouncer) port=$BOUNCER_PORT; user=postgres; pass=$PASSWORD; db=postgres ;;
    weir) port=$WEIR_PORT; user=bench; pass=bench-token; db=bench ;;
  esac
  local flags=(-n -c "$CLIENTS" -j 2 -T "$DURATION" -M "$PROTOCOL" -h 127.0.0.1 -p "$port" -U "$user")
  [ "$workload" = select-only ] && flags+=(-S)
  local out
  if ! out=$(PGPASSWORD=$pass "$BINDIR/pgbench" "${flags[@]}" "$db" 2>&1); then
    echo "$out" >&2; echo "pgbench failed for $mode/$workload" >&2; exit 1
  fi
  local failed
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
  if [ -n "$failed" ] && [ "$failed" != 0 ]; then echo "$out" >&2; echo "$mode/$workload: $failed failed transactions" >&2; exit 1; fi
  local tps lat
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$out")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
  printf '   %-10s %-12s round %s: %10.0f tps  %6.3f ms\n' "$mode" "$workload" "$3" "$tps" "$lat"
  TPS[$mode,$workload]="${TPS[$mode,$workload]:-} $tps"
  LAT[$mode,$workload]="${LAT[$mode,$workload]:-} $lat"
}

MODES=(direct pgbouncer)
[ "$WEIR_OK" = 1 ] && MODES+=(weir)
for workload in select-only tpcb-like; do
  echo "== $workload: $CLIENTS clients, ${DURATION}s, -M $PROTOCOL, $ROUNDS rounds"
  for round in $(seq 1 "$ROUNDS"); do
    order=("${MODES[@]}")
    if [ $((round % 2)) = 0 ]; then order=(); for ((i=${#MODES[@]}-1; i>=0; i--)); do order+=("${MODES[$i]}"); done; fi
    for mode in "${order[@]}"; do run "$mode" "$workload" "$round"; done
  done
done

mean() { awk '{s=0; for(i=1;i<=NF;i++) s+=$i; printf "%.3f", s/NF}' <<<"$1"; }
mkdir -p bench/results
{
  echo "pgbench on $(nproc) cores, scale $SCALE, $CLIENTS clients, -M $PROTOCOL, ${DURATION}s x $ROUNDS rounds per mode, alternating order; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| workload | mode | TPS | latency avg (ms) | TPS vs direct |"
  echo "|---|---|---:|---:|---:|"
  for workload in select-only tpcb-like; do
    direct=$(mean "${TPS[direct,$workload]}")
    for mode in direct pgbouncer weir; do
      if [ -z "${TPS[$mode,$workload]:-}" ]; then echo "| $workload | $mode | not run | | |"; continue; fi
      t=$(mean "${TPS[$mode,$workload]}"); l=$(mean "${LAT[$mode,$workload]}")
      printf '| %s | %s | %.0f | %.3f | %.2fx |\n' "$workload" "$mode" "$t" "$l" "$(awk -v a="$t" -v b="$direct" 'BEGIN{print a/b}')"
    done
  done
} | tee bench/results/latest.md
