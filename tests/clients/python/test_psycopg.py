#!/usr/bin/env python3
"""Driver conformance checks for Weir, using psycopg 3.

Exercises a PostgreSQL server (normally: the Weir gateway in front of one)
through the connection described by the environment:

    WEIR_HOST, WEIR_PORT, WEIR_USER, WEIR_PASSWORD, WEIR_DB
    WEIR_SSLMODE (optional; libpq default "prefer" when unset)

Prints "ok <name>" per passing check, "FAIL <name>: <reason>" per failing
one, and finally "N passed, M failed". Exits 0 only if every check passed.

Requires: pip install "psycopg[binary]"   (tested with psycopg 3.3.9)
"""

import datetime as dt
import logging
import os
import sys
import threading
import time
import traceback
from decimal import Decimal

try:
    import psycopg
    from psycopg import errors, sql
except ImportError:  # pragma: no cover
    print("FAIL setup: psycopg is not installed (pip install \"psycopg[binary]\")")
    print("0 passed, 1 failed")
    sys.exit(1)

PID = os.getpid()
COPY_ROWS = 10_000


def conninfo_kwargs():
    missing = [v for v in ("WEIR_HOST", "WEIR_PORT", "WEIR_USER", "WEIR_DB") if not os.environ.get(v)]
    if missing:
        raise SystemExit(f"FAIL setup: missing environment variables: {', '.join(missing)}")
    kw = dict(
        host=os.environ["WEIR_HOST"],
        port=int(os.environ["WEIR_PORT"]),
        user=os.environ["WEIR_USER"],
        dbname=os.environ["WEIR_DB"],
        connect_timeout=10,
        application_name="weir-psycopg-test",
    )
    if os.environ.get("WEIR_PASSWORD") is not None:
        kw["password"] = os.environ["WEIR_PASSWORD"]
    if os.environ.get("WEIR_SSLMODE"):
        kw["sslmode"] = os.environ["WEIR_SSLMODE"]
    return kw


def connect(**extra):
    kw = conninfo_kwargs()
    kw.update(extra)
    return psycopg.connect(**kw)


class CheckFailed(AssertionError):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def expect_eq(got, want, what):
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}")


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


# ---------------------------------------------------------------- checks


@check
def connect_and_simple_query():
    with connect() as conn:
        expect_eq(conn.execute("select 1").fetchone(), (1,), "select 1")
        # Simple-query protocol with several statements in one string.
        cur = conn.cursor()
        cur.execute("select 1; select 'two'")  # no params -> simple query protocol
        expect_eq(cur.fetchone(), (1,), "multi-statement first result")
        expect(cur.nextset(), "multi-statement second result missing")
        expect_eq(cur.fetchone(), ("two",), "multi-statement second result")
        ver = conn.info.parameter_status("server_version")
        expect(ver, "server_version parameter status missing")
        expect(conn.info.server_version > 0, "server_version not parsed")
        expect_eq(conn.info.parameter_status("client_encoding"), "UTF8", "client_encoding")
        expect(conn.info.backend_pid > 0, "backend pid missing")


@check
def prepared_statements():
    with connect() as conn:
        q = "select %s::int + %s::int, %s::text"
        for i in range(3):
            row = conn.execute(q, (i, 10, f"v{i}"), prepare=True).fetchone()
            expect_eq(row, (i + 10, f"v{i}"), f"prepare=True run {i}")
        # Explicit server-side preparation on first use.
        conn.prepare_threshold = 0
        cur = conn.cursor()
        for i in range(3):
            cur.execute("select %s::bigint * 2, %s::text || 'x'", (i, "a"))
            expect_eq(cur.fetchone(), (i * 2, "ax"), f"threshold=0 run {i}")
        names = conn.execute(
            "select count(*) from pg_prepared_statements where not from_sql"
        ).fetchone()[0]
        expect(names >= 2, f"expected >=2 server-side prepared statements, saw {names}")
        # Unnamed extended-protocol path too.
        conn.prepare_threshold = None
        for i in range(3):
            expect_eq(conn.execute("select %s::int", (i,)).fetchone(), (i,), "unprepared extended")


@check
def binary_results():
    ts = dt.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=dt.timezone.utc)
    with connect() as conn:
        conn.execute("set timezone to 'UTC'")
        with conn.cursor(binary=True) as cur:
            cur.execute(
                """select 42::int4, -9000000000::int8, 'héllo'::text, '\\x00ff10'::bytea,
                          123456789.000123::numeric, %s::timestamptz,
                          array[1,2,null,4]::int4[], array['a','b c']::text[],
                          null::int4, null::text, true, 1.5::float8""",
                (ts,),
            )
            row = cur.fetchone()
            expect(cur.pgresult.fformat(0) == 1, "result column 0 not in binary format")
            want = (
                42, -9000000000, "héllo", b"\x00\xff\x10",
                Decimal("123456789.000123"), ts,
                [1, 2, None, 4], ["a", "b c"],
                None, None, True, 1.5,
            )
            expect_eq(tuple(row), want, "binary row")
            # Many rows in binary, with parameters also sent in binary.
            cur.execute("select g, md5(g::text) from generate_series(1, %b) g", (500,))
            rows = cur.fetchall()
            expect_eq(len(rows), 500, "binary row count")
            expect_eq(rows[-1][0], 500, "last binary row")


@check
def transactions():
    table = f"weir_tx_{PID}"
    with connect() as conn:
        conn.execute(sql.SQL("create table {} (id int primary key, v text)").format(sql.Identifier(table)))
        conn.commit()
        try:
            t = sql.Identifier(table)
            conn.autocommit = True
            with conn.transaction():
                conn.execute(sql.SQL("insert into {} values (1, 'committed')").format(t))
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("insert into {} values (2, 'rolled back')").format(t))
                    raise RuntimeError("force rollback")
            except RuntimeError:
                pass
            # Explicit rollback through psycopg.Rollback.
            with conn.transaction():
                conn.execute(sql.SQL("insert into {} values (3, 'rolled back too')").format(t))
                raise psycopg.Rollback()
            # Nested: savepoint rolled back, outer commits.
            with conn.transaction():
                conn.execute(sql.SQL("insert into {} values (4, 'outer')").format(t))
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("insert into {} values (5, 'inner')").format(t))
                        raise RuntimeError("inner")
                except RuntimeError:
                    pass
            ids = [r[0] for r in conn.execute(sql.SQL("select id from {} order by id").format(t))]
            expect_eq(ids, [1, 4], "ids after commit/rollback")

            # Error mid-transaction -> failed state -> rollback recovers.
            conn.autocommit = False
            conn.execute(sql.SQL("insert into {} values (10, 'x')").format(t))
            try:
                conn.execute("select 1/0")
                raise CheckFailed("division by zero did not raise")
            except errors.DivisionByZero:
                pass
            expect_eq(conn.info.transaction_status, psycopg.pq.TransactionStatus.INERROR, "tx status after error")
            try:
                conn.execute("select 1")
                raise CheckFailed("statement in failed transaction did not raise")
            except errors.InFailedSqlTransaction as e:
                expect_eq(e.sqlstate, "25P02", "in-failed sqlstate")
            conn.rollback()
            expect_eq(conn.info.transaction_status, psycopg.pq.TransactionStatus.IDLE, "tx status after rollback")
            expect_eq(conn.execute("select 1").fetchone(), (1,), "select after rollback")
            n = conn.execute(sql.SQL("select count(*) from {} where id = 10").format(t)).fetchone()[0]
            expect_eq(n, 0, "row from failed transaction")
            conn.commit()
        finally:
            conn.rollback()
            conn.autocommit = True
            conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(table)))


@check
def copy_text_and_binary():
    table = f"weir_copy_{PID}"
    t = sql.Identifier(table)
    with connect(autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (id int, name text, amount numeric, data bytea)").format(t))
        try:
            cur = conn.cursor()
            # --- text format, COPY FROM STDIN
            with cur.copy(sql.SQL("COPY {} (id, name, amount, data) FROM STDIN").format(t)) as copy:
                for i in range(COPY_ROWS):
                    copy.write_row((i, f"name {i}\ttab", Decimal(i) / 100, bytes([i % 256, 0, 255])))
            expect_eq(cur.rowcount, COPY_ROWS, "COPY FROM rowcount")
            n, s = conn.execute(sql.SQL("select count(*), sum(id) from {}").format(t)).fetchone()
            expect_eq((n, s), (COPY_ROWS, COPY_ROWS * (COPY_ROWS - 1) // 2), "count/sum after text COPY")

            # --- text format, COPY TO STDOUT, rows()
            got = 0
            with cur.copy(sql.SQL("COPY (select id, name, amount, data from {} order by id) TO STDOUT").format(t)) as copy:
                copy.set_types(["int4", "text", "numeric", "bytea"])
                for i, row in enumerate(copy.rows()):
                    expect_eq(row, (i, f"name {i}\ttab", Decimal(i) / 100, bytes([i % 256, 0, 255])), f"text COPY row {i}")
                    got += 1
            expect_eq(got, COPY_ROWS, "text COPY TO row count")

            # --- raw block read, text format
            raw = bytearray()
            with cur.copy(sql.SQL("COPY (select id from {} order by id) TO STDOUT").format(t)) as copy:
                for block in copy:
                    raw += block
            lines = bytes(raw).decode().splitlines()
            expect_eq(len(lines), COPY_ROWS, "raw COPY line count")
            expect_eq(lines[-1], str(COPY_ROWS - 1), "raw COPY last line")

            # --- binary format, COPY FROM STDIN
            conn.execute(sql.SQL("truncate {}").format(t))
            with cur.copy(sql.SQL("COPY {} (id, name, amount, data) FROM STDIN (FORMAT BINARY)").format(t)) as copy:
                copy.set_types(["int4", "text", "numeric", "bytea"])
                for i in range(COPY_ROWS):
                    copy.write_row((i, f"bin {i}", Decimal(i) / 7 if i % 3 else None, bytes(range(i % 50))))
            n = conn.execute(sql.SQL("select count(*) from {}").format(t)).fetchone()[0]
            expect_eq(n, COPY_ROWS, "count after binary COPY")

            # --- binary format, COPY TO STDOUT
            got = 0
            with cur.copy(sql.SQL("COPY (select id, name, data from {} order by id) TO STDOUT (FORMAT BINARY)").format(t)) as copy:
                copy.set_types(["int4", "text", "bytea"])
                for i, row in enumerate(copy.rows()):
                    expect_eq(row, (i, f"bin {i}", bytes(range(i % 50))), f"binary COPY row {i}")
                    got += 1
            expect_eq(got, COPY_ROWS, "binary COPY TO row count")
            nulls = conn.execute(sql.SQL("select count(*) from {} where amount is null").format(t)).fetchone()[0]
            expect_eq(nulls, len(range(0, COPY_ROWS, 3)), "NULLs via binary COPY")

            # --- an error inside COPY FROM must leave the connection usable
            try:
                with cur.copy(sql.SQL("COPY {} (id) FROM STDIN").format(t)) as copy:
                    copy.write(b"1\nnot-a-number\n")
                raise CheckFailed("bad COPY data did not raise")
            except errors.InvalidTextRepresentation:
                pass
            expect_eq(conn.execute("select 1").fetchone(), (1,), "select after failed COPY")
        finally:
            conn.execute(sql.SQL("drop table if exists {}").format(t))


@check
def pipeline_mode():
    table = f"weir_pipe_{PID}"
    t = sql.Identifier(table)
    with connect(autocommit=True) as conn:
        try:
            with conn.pipeline() as p:
                conn.execute(sql.SQL("create table {} (id int, v text)").format(t))
                cur = conn.cursor()
                cur.executemany(sql.SQL("insert into {} values (%s, %s)").format(t), [(i, f"p{i}") for i in range(100)])
                c1 = conn.execute("select 1")
                c2 = conn.execute("select %s::text", ("two",))
                c3 = conn.execute(sql.SQL("select count(*) from {}").format(t))
                p.sync()
                expect_eq(c1.fetchone(), (1,), "pipeline result 1")
                expect_eq(c2.fetchone(), ("two",), "pipeline result 2")
                expect_eq(c3.fetchone(), (100,), "pipeline count")
            # An error inside a pipeline aborts the rest of that pipeline; the
            # connection is fine afterwards. Depending on timing psycopg surfaces
            # the error from execute(), sync() or the block exit (it reads results
            # opportunistically), so catch it around the whole block. psycopg then
            # logs a warning about the abort while leaving the block: expected here.
            raised = None
            ok1 = None
            plog = logging.getLogger("psycopg")
            old_level = plog.level
            plog.setLevel(logging.ERROR)
            try:
                with conn.pipeline() as p:
                    ok1 = conn.execute("select 1")
                    conn.execute("select 1/0")
                    conn.execute("select 2")
                    p.sync()
            except errors.DivisionByZero as e:
                raised = e
            finally:
                plog.setLevel(old_level)
            expect(raised is not None, "error in pipeline did not raise")
            expect_eq(raised.sqlstate, "22012", "pipeline error sqlstate")
            expect_eq(ok1.fetchone(), (1,), "pipeline result before the error")
            expect_eq(conn.execute("select 3").fetchone(), (3,), "select after pipeline error")
        finally:
            conn.execute(sql.SQL("drop table if exists {}").format(t))


@check
def cancel():
    with connect(autocommit=True) as conn:
        canceller_error = []
        finished = threading.Event()

        def canceller():
            # A cancel that arrives before the query reaches the server cancels nothing
            # (as with PostgreSQL itself), so keep cancelling until the query has ended:
            # on a loaded machine the first one can be early.
            while not finished.wait(0.5):
                try:
                    if hasattr(conn, "cancel_safe"):
                        conn.cancel_safe(timeout=10)
                    else:  # psycopg < 3.2
                        conn.cancel()
                except Exception as e:  # noqa: BLE001
                    canceller_error.append(e)
                    return

        th = threading.Thread(target=canceller, daemon=True)
        start = time.monotonic()
        th.start()
        try:
            conn.execute("select pg_sleep(30)")
            raise CheckFailed("pg_sleep(30) completed without being cancelled")
        except errors.QueryCanceled as e:
            expect_eq(e.sqlstate, "57014", "cancel sqlstate")
        finally:
            finished.set()
        elapsed = time.monotonic() - start
        th.join(10)
        expect(not canceller_error, f"cancel request failed: {canceller_error!r}")
        expect(elapsed < 10, f"cancel took {elapsed:.1f}s")
        expect_eq(conn.execute("select 1").fetchone(), (1,), "select after cancel")
        # Non-thread variant: the blocking cancel() from the same thread
        # when nothing is running must be harmless.
        conn.cancel()
        expect_eq(conn.execute("select 2").fetchone(), (2,), "select after idle cancel")


@check
def listen_notify():
    chan = f"weir_chan_{PID}"
    with connect(autocommit=True) as listener, connect(autocommit=True) as sender:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(chan)))
        sender.execute(sql.SQL("NOTIFY {}, 'payload-1'").format(sql.Identifier(chan)))
        sender.execute("select pg_notify(%s, %s)", (chan, "payload-2"))
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            for n in listener.notifies(timeout=max(0.1, deadline - time.monotonic()), stop_after=2 - len(got)):
                got.append(n)
        expect_eq([n.payload for n in got], ["payload-1", "payload-2"], "notification payloads")
        expect_eq({n.channel for n in got}, {chan}, "notification channel")
        expect_eq({n.pid for n in got}, {sender.info.backend_pid}, "notification sender pid")
        # Notification arriving while the listener is running a query.
        sender.execute("select pg_notify(%s, 'during-query')", (chan,))
        listener.execute("select 1")
        more = list(listener.notifies(timeout=5, stop_after=1))
        expect_eq([n.payload for n in more], ["during-query"], "notification delivered around a query")
        listener.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(chan)))


@check
def notices():
    with connect(autocommit=True) as conn:
        seen = []
        conn.add_notice_handler(lambda diag: seen.append((diag.severity_nonlocalized, diag.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
        expect_eq(seen, [("NOTICE", "hello")], "notices")
        conn.execute("DO $$ BEGIN RAISE WARNING 'careful %', 42; END $$")
        expect_eq(seen[-1], ("WARNING", "careful 42"), "warning notice")


@check
def error_passthrough():
    with connect(autocommit=True) as conn:
        try:
            conn.execute("select 1/0")
            raise CheckFailed("select 1/0 did not raise")
        except errors.DivisionByZero as e:
            expect_eq(e.sqlstate, "22012", "sqlstate")
            expect_eq(e.diag.severity_nonlocalized, "ERROR", "severity")
            expect("division by zero" in e.diag.message_primary, f"message: {e.diag.message_primary!r}")
        try:
            conn.execute("select * from weir_no_such_table_xyz")
            raise CheckFailed("missing table did not raise")
        except errors.UndefinedTable as e:
            expect_eq(e.sqlstate, "42P01", "undefined table sqlstate")
            expect(e.diag.statement_position is not None, "error position missing")
        # A statement that does not parse never reaches the server: Weir denies it (fail closed).
        try:
            conn.execute("selec 1")
            raise CheckFailed("syntax error did not raise")
        except errors.InsufficientPrivilege as e:
            expect_eq(e.sqlstate, "42501", "unparsable statement sqlstate")
            expect(e.diag.message_primary.startswith("weir: denied by weir.parse"), f"message: {e.diag.message_primary!r}")
        # Same via the extended protocol with parameters.
        try:
            conn.execute("select %s::int / 0", (1,))
            raise CheckFailed("parametrised 1/0 did not raise")
        except errors.DivisionByZero as e:
            expect_eq(e.sqlstate, "22012", "extended sqlstate")
        expect_eq(conn.execute("select 1").fetchone(), (1,), "select after errors")


@check
def masked_binary_results():
    # Through Weir (WEIR_MASKING=1): sensitive columns come back masked, in binary format
    # too, still valid for their types; a text column with an address inside is masked by
    # content. Against a plain server this check only reports what it saw.
    table = f"weir_mask_{PID}"
    through_weir = os.environ.get("WEIR_MASKING") == "1"
    with connect(autocommit=True) as conn:
        conn.execute(sql.SQL(
            "create table {} (id int, email text, card_number text, birth_date date, remark text)"
        ).format(sql.Identifier(table)))
        try:
            conn.execute(
                sql.SQL("insert into {} values (1, 'jane.doe@example.com', '4111 1111 1111 1111', "
                        "'1984-02-29', 'write to omar@corp.example')").format(sql.Identifier(table))
            )
            with conn.cursor(binary=True) as cur:
                cur.execute(sql.SQL("select id, email, card_number, birth_date, remark, upper(email) "
                                    "from {} where id = %s").format(sql.Identifier(table)), (1,))
                row = cur.fetchone()
                expect(cur.pgresult.fformat(1) == 1, "email not in binary format")
                if through_weir:
                    expect_eq(row, (1, "j***@example.com", "**** **** **** 1111", None, "****",
                                    "J***@EXAMPLE.COM"), "masked binary row")
                    for value in row:
                        expect("jane" not in str(value).lower() and "omar" not in str(value),
                               f"clear value reached the client: {value!r}")
        finally:
            conn.execute(sql.SQL("drop table {}").format(sql.Identifier(table)))


@check
def ssl_status():
    # Reports (does not require) TLS; with WEIR_SSLMODE=require it must be on.
    with connect() as conn:
        in_use = bool(conn.pgconn.ssl_in_use)
        if os.environ.get("WEIR_SSLMODE") in ("require", "verify-ca", "verify-full"):
            expect(in_use, "WEIR_SSLMODE requires TLS but the connection is not encrypted")
        if os.environ.get("WEIR_SSLMODE") == "disable":
            expect(not in_use, "sslmode=disable but connection is encrypted")


# ---------------------------------------------------------------- runner


def main():
    only = set(sys.argv[1:])
    passed = failed = 0
    for fn in CHECKS:
        name = fn.__name__
        if only and name not in only:
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            if not isinstance(e, CheckFailed):
                traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok {name}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
