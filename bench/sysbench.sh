#!/usr/bin/env bash
# sysbench oltp_read_only side by side, in one run on one machine, against one throwaway MariaDB:
#
#   direct   sysbench -> MariaDB
#   weir     sysbench -> Weir's MySQL listener -> MariaDB
#
# ProxySQL would be the third column, as pgbouncer is on the PostgreSQL side, but neither
# Debian bookworm nor PyPI ships it here (and prebuilt downloads are not possible), so the
# table says "not run" for it.
#
# sysbench (libmariadb) uses server-side prepared statements by default, so Weir's binary
# protocol path is what is measured: every COM_STMT_EXECUTE is decided again, its rows pass the
# masking stage, and its event goes through the write-ahead trail. The order of the modes
# alternates between rounds. The table is printed and written to bench/results/sysbench-latest.md.
#
# Usage: bench/sysbench.sh            DURATION=30 ROUNDS=3 THREADS=8 bench/sysbench.sh
# Knobs: DURATION (s per run, 20), ROUNDS (2), THREADS (sysbench --threads, 8), TABLES (4),
#        TABLE_SIZE (10000), PS_MODE (sysbench --db-ps-mode: auto = prepared, disable = text),
#        WEIR_BIN (default target/release/weir, built if missing), WEIR_STORE (sqlite://weir.db),
#        RESULTS_FILE (bench/results/sysbench-latest.md).
# Needs: sysbench and mariadb-server (apt-get installs them when run as root), python3.
set -euo pipefail

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-8}
TABLES=${TABLES:-4}
TABLE_SIZE=${TABLE_SIZE:-10000}
PS_MODE=${PS_MODE:-auto}
die() { echo "sysbench.sh: $*" >&2; exit 1; }
for v in DURATION ROUNDS THREADS TABLES TABLE_SIZE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
case $PS_MODE in auto | disable) ;; *) die "PS_MODE must be auto or disable" ;; esac

if [ -n "${WEIR_BIN:-}" ] && [[ $WEIR_BIN == */* ]] && [[ $WEIR_BIN != /* ]]; then
  WEIR_BIN=$PWD/$WEIR_BIN
fi
cd "$(dirname "$0")/.."
RESULTS_FILE=${RESULTS_FILE:-bench/results/sysbench-latest.md}

need() { # command, package
  command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] && return
  [ "$(id -u)" = 0 ] || die "$1 is not installed (apt-get install $2)"
  echo "== installing $2"
  apt-get install -y -qq "$2" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }
}
need sysbench sysbench
need mariadbd mariadb-server
need mariadb mariadb-client
command -v python3 >/dev/null || die "python3 is needed to pick free ports"
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)

WEIR_BIN=${WEIR_BIN:-target/release/weir}
if [ ! -x "$WEIR_BIN" ]; then
  echo "== building $WEIR_BIN"
  cargo build --release -p weir
fi

WORK=$(mktemp -d /tmp/weir-sysbench.XXXXXX)
MARIADB_PID=
WEIR_PID=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in $WEIR_PID $MARIADB_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" != 0 ]; then
    local keep
    keep=$(mktemp -d /tmp/weir-sysbench-logs.XXXXXX)
    cp "$WORK"/*.log "$keep"/ 2>/dev/null || true
    echo "sysbench.sh: failed (exit $rc); logs kept in $keep" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DB_PORT=$(free_port)
WEIR_PORT=$(free_port)
PASSWORD=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
TOKEN=bench-token-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')

# ---------------------------------------------------------------------------------------------
# MariaDB: the same settings as the tests' throwaway server (crates/weir/src/mariadb.rs), with a
# buffer pool that holds the tables.
# ---------------------------------------------------------------------------------------------
echo "== starting MariaDB on 127.0.0.1:$DB_PORT"
mariadb-install-db --no-defaults --user=root --datadir="$WORK/data" --tmpdir="$WORK" \
  --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
  --innodb-log-file-size=64M >"$WORK/install.log" 2>&1 || die "mariadb-install-db failed (see $WORK/install.log)"
"$MARIADBD" --no-defaults --user=root --datadir="$WORK/data" --port="$DB_PORT" --bind-address=127.0.0.1 \
  --socket="$WORK/mysqld.sock" --pid-file="$WORK/mysqld.pid" --log-error="$WORK/mariadb.log" \
  --tmpdir="$WORK" --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --skip-name-resolve \
  --skip-log-bin --performance-schema=off --max-connections=500 \
  --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci &
MARIADB_PID=$!
root() { mariadb --no-defaults --socket="$WORK/mysqld.sock" -u root --batch --skip-column-names "$@"; }
for _ in $(seq 600); do root -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
root -e 'select 1' >/dev/null || die "MariaDB did not start (see $WORK/mariadb.log)"
root <<SQL
CREATE DATABASE sbtest;
CREATE USER 'sbtest'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('$PASSWORD');
GRANT ALL ON sbtest.* TO 'sbtest'@'127.0.0.1';
SQL
SB=(sysbench oltp_read_only --db-driver=mysql --mysql-host=127.0.0.1 --tables="$TABLES"
  --table-size="$TABLE_SIZE" --db-ps-mode="$PS_MODE")
echo "== sysbench prepare ($TABLES tables of $TABLE_SIZE rows)"
"${SB[@]}" --mysql-port="$DB_PORT" --mysql-user=sbtest --mysql-password="$PASSWORD" \
  --mysql-db=sbtest prepare >"$WORK/prepare.log" 2>&1 || die "sysbench prepare failed (see $WORK/prepare.log)"

# ---------------------------------------------------------------------------------------------
# Weir: a MySQL listener, target sbtest (development: reads are allowed as they are), the trail
# on disk as in production.
# ---------------------------------------------------------------------------------------------
printf '%s' "$PASSWORD" >"$WORK/upstream-password"
cat >"$WORK/weir.toml" <<TOML
[gateway]
postgres_listen = "127.0.0.1:$(free_port)"
mysql_listen = "127.0.0.1:$WEIR_PORT"
store = "${WEIR_STORE:-sqlite://weir.db}"

[[identity.static]]
name = "bench"
kind = "service"
groups = ["bench"]
token = "$TOKEN"

[[target]]
name = "sbtest"
engine = "mysql"
environment = "development"
upstream = "127.0.0.1:$DB_PORT"
database = "sbtest"
user = "sbtest"
password_file = "upstream-password"
TOML
echo "== starting Weir on 127.0.0.1:$WEIR_PORT"
(cd "$WORK" && RUST_LOG=${WEIR_LOG:-warn} exec "$OLDPWD/$WEIR_BIN" serve --config weir.toml) >"$WORK/weir.log" 2>&1 &
WEIR_PID=$!
for _ in $(seq 300); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $WEIR_PORT), 0.2)" 2>/dev/null && break
  sleep 0.1
done

# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
declare -A TPS QPS LAT CPU
run() { # mode round
  local mode=$1 port user password out cpu0 cpu1
  case $mode in
    direct) port=$DB_PORT user=sbtest password=$PASSWORD ;;
    weir) port=$WEIR_PORT user=bench password=$TOKEN ;;
  esac
  # libmariadb loads its mysql_clear_password plugin (what Weir's AuthSwitch asks for) racily
  # when several threads connect at once: "Plugin mysql_clear_password could not be loaded:
  # it is already loaded". That is the client's bug; such a run is tried again.
  local attempt
  for attempt in 1 2 3; do
    cpu0=$(awk '{print $14 + $15}' "/proc/$WEIR_PID/stat")
    if out=$("${SB[@]}" --mysql-port="$port" --mysql-user="$user" --mysql-password="$password" \
      --mysql-db=sbtest --threads="$THREADS" --time="$DURATION" --report-interval=0 run 2>&1); then
      break
    fi
    echo "$out" >"$WORK/failed-$mode.log"
    if ! grep -q "is already loaded" <<<"$out" || [ "$attempt" = 3 ]; then
      die "sysbench run ($mode) failed: $(echo "$out" | tail -n 5)"
    fi
    echo "   ($mode: libmariadb's plugin-loading race at connect; trying again)"
  done
  cpu1=$(awk '{print $14 + $15}' "/proc/$WEIR_PID/stat")
  local tps qps lat errors tx
  tps=$(echo "$out" | awk '/transactions:/ {gsub(/\(/, "", $3); print $3}')
  qps=$(echo "$out" | awk '/queries:/ && /per sec/ {gsub(/\(/, "", $3); print $3}')
  lat=$(echo "$out" | awk '/avg:/ {print $2; exit}')
  errors=$(echo "$out" | awk '/ignored errors:/ {print $3}')
  tx=$(echo "$out" | awk '/transactions:/ {print $2}')
  [ "${errors:-0}" = 0 ] || die "sysbench ($mode) reported $errors errors"
  TPS[$mode]="${TPS[$mode]:-} $tps"
  QPS[$mode]="${QPS[$mode]:-} $qps"
  LAT[$mode]="${LAT[$mode]:-} $lat"
  if [ "$mode" = weir ]; then
    # Weir's CPU (user + system, all threads) per transaction, in microseconds.
    CPU[$mode]="${CPU[$mode]:-} $(python3 -c "print(round(($cpu1 - $cpu0) * 1e6 / $(getconf CLK_TCK) / $tx, 1))")"
  fi
  printf '   %-7s round %s: %8s tps %9s qps  avg %6s ms\n' "$mode" "$2" "$tps" "$qps" "$lat"
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then modes=(direct weir); else modes=(weir direct); fi
  for m in "${modes[@]}"; do run "$m" "$r"; done
done

mean() { python3 -c "import sys; v=[float(x) for x in sys.argv[1:]]; print(round(sum(v)/len(v), 2))" "$@"; }
D=$(mean ${TPS[direct]})
W=$(mean ${TPS[weir]})
{
  echo "# sysbench oltp_read_only: direct vs Weir ($(date -u +%Y-%m-%d))"
  echo
  echo "$(nproc) cores; $TABLES tables × $TABLE_SIZE rows; $THREADS threads; ${DURATION} s × $ROUNDS rounds per mode, alternating;"
  echo "db-ps-mode=$PS_MODE ($([ "$PS_MODE" = auto ] && echo "server-side prepared statements: Weir's binary protocol" || echo "text protocol")); trail: ${WEIR_STORE:-sqlite://weir.db on disk}."
  echo
  echo "| mode | TPS (mean) | QPS (mean) | avg latency ms (mean) | vs direct | Weir CPU µs / tx |"
  echo "|---|---|---|---|---|---|"
  echo "| direct | $D | $(mean ${QPS[direct]}) | $(mean ${LAT[direct]}) | 1.00× | |"
  echo "| ProxySQL | not run: no package on this machine's registries | | | | |"
  echo "| weir | $W | $(mean ${QPS[weir]}) | $(mean ${LAT[weir]}) | $(python3 -c "print(f'{$W / $D:.2f}×')") | $(mean ${CPU[weir]}) |"
} | tee "$RESULTS_FILE"
