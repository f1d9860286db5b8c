// Driver conformance checks for Weir, using pgjdbc (the PostgreSQL JDBC driver that DBeaver,
// DataGrip and most JVM tools use).
//
// Exercises a PostgreSQL server (normally: the Weir gateway in front of one) through the
// connection described by the environment:
//
//   WEIR_HOST, WEIR_PORT, WEIR_USER, WEIR_PASSWORD, WEIR_DB
//   WEIR_SSLMODE (optional; pgjdbc's default "prefer" when unset). pgjdbc's "require" encrypts
//                without verifying the certificate.
//   WEIR_MASKING=1 (optional): the server is Weir with its default policy and masking: check
//                denials and masked values (otherwise those checks only run the statements).
//
// Prints "ok <name>" per passing check, "FAIL <name>: <reason>" per failing one, and finally
// "N passed, M failed". Exits 0 only if every check passed.
//
// Run with Java's source launcher (JDK 11+, no build step; Debian: libpostgresql-jdbc-java):
//   java -cp /usr/share/java/postgresql.jar tests/clients/java/WeirJdbc.java [check...]

import java.lang.reflect.Field;
import java.math.BigDecimal;
import java.net.Socket;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Properties;
import java.util.Set;

public class WeirJdbc {
    static final long PID = ProcessHandle.current().pid();
    static final boolean THROUGH_WEIR = "1".equals(System.getenv("WEIR_MASKING"));

    // ------------------------------------------------------------------ helpers

    static final class CheckFailed extends RuntimeException {
        private static final long serialVersionUID = 1L;

        CheckFailed(String msg) {
            super(msg);
        }
    }

    interface Check {
        void run() throws Exception;
    }

    static void expect(boolean cond, String msg) {
        if (!cond) {
            throw new CheckFailed(msg);
        }
    }

    static void expectEq(Object got, Object want, String what) {
        if (!Objects.deepEquals(got, want)) {
            throw new CheckFailed(what + ": got " + show(got) + ", want " + show(want));
        }
    }

    static String show(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof String) {
            return "\"" + v + "\"";
        }
        if (v instanceof int[]) {
            return Arrays.toString((int[]) v);
        }
        if (v instanceof Object[]) {
            return Arrays.deepToString((Object[]) v);
        }
        return v.toString();
    }

    static String env(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            System.out.println("FAIL setup: missing environment variable " + name);
            System.out.println("0 passed, 1 failed");
            System.exit(1);
        }
        return v;
    }

    static String url() {
        return "jdbc:postgresql://" + env("WEIR_HOST") + ":" + env("WEIR_PORT") + "/" + env("WEIR_DB");
    }

    static Properties props(String... extra) {
        Properties p = new Properties();
        p.setProperty("user", env("WEIR_USER"));
        String password = System.getenv("WEIR_PASSWORD");
        if (password != null) {
            p.setProperty("password", password);
        }
        String sslmode = System.getenv("WEIR_SSLMODE");
        if (sslmode != null && !sslmode.isEmpty()) {
            p.setProperty("sslmode", sslmode);
        }
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "60");
        p.setProperty("ApplicationName", "weir-pgjdbc-test");
        for (int i = 0; i + 1 < extra.length; i += 2) {
            p.setProperty(extra[i], extra[i + 1]);
        }
        return p;
    }

    /** A connection; `extra` is pairs of pgjdbc connection properties. */
    static Connection connect(String... extra) throws SQLException {
        return DriverManager.getConnection(url(), props(extra));
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
        }
    }

    static Object scalar(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            expect(rs.next(), "no row from: " + sql);
            return rs.getObject(1);
        }
    }

    /** The primary message of a server error (without pgjdbc's "ERROR: " and detail lines). */
    static String primary(SQLException e) {
        if (e instanceof org.postgresql.util.PSQLException) {
            org.postgresql.util.ServerErrorMessage m =
                    ((org.postgresql.util.PSQLException) e).getServerErrorMessage();
            if (m != null && m.getMessage() != null) {
                return m.getMessage();
            }
        }
        return String.valueOf(e.getMessage());
    }

    interface SqlAction {
        void run() throws SQLException;
    }

    /** Runs `run` and returns the SQLException it must raise. */
    static SQLException mustFail(String what, SqlAction run) {
        try {
            run.run();
        } catch (SQLException e) {
            return e;
        }
        throw new CheckFailed(what + " did not raise");
    }

    static void expectDenied(SQLException e, String rule, String what) {
        expectEq(e.getSQLState(), "42501", what + " sqlstate (message: " + e.getMessage() + ")");
        String msg = primary(e);
        expect(msg.startsWith("weir: denied by " + rule), what + " message: \"" + msg + "\"");
    }

    // ------------------------------------------------------------------ checks

    static final Map<String, Check> CHECKS = new LinkedHashMap<>();

    static {
        CHECKS.put("connect", WeirJdbc::connectCheck);
        CHECKS.put("prepared_statements", WeirJdbc::preparedStatements);
        CHECKS.put("batch_inserts", WeirJdbc::batchInserts);
        CHECKS.put("metadata_browsing", WeirJdbc::metadataBrowsing);
        CHECKS.put("server_side_cursor", WeirJdbc::serverSideCursor);
        CHECKS.put("transactions", WeirJdbc::transactions);
        CHECKS.put("denial", WeirJdbc::denial);
        CHECKS.put("masked_results", WeirJdbc::maskedResults);
        CHECKS.put("ssl_status", WeirJdbc::sslStatus);
        CHECKS.put("large_objects", WeirJdbc::largeObjects);
    }

    static void connectCheck() throws Exception {
        try (Connection c = connect()) {
            expect(c.isValid(5), "isValid(5) is false");
            expectEq(scalar(c, "select 1"), 1, "select 1");
            DatabaseMetaData md = c.getMetaData();
            expectEq(md.getDatabaseProductName(), "PostgreSQL", "product name");
            expect(md.getDatabaseMajorVersion() >= 10, "server major version " + md.getDatabaseMajorVersion());
            expectEq(md.getUserName(), env("WEIR_USER"), "metadata user name");
            expectEq(scalar(c, "show client_encoding"), "UTF8", "client_encoding");
            expectEq(scalar(c, "select current_database()"), env("WEIR_DB"), "current_database()");
        }
    }

    static void preparedStatements() throws Exception {
        LocalDateTime ts = LocalDateTime.of(2024, 2, 29, 12, 34, 56, 789_000_000);
        BigDecimal amount = new BigDecimal("123456789.000123");
        String sql = "select ?::int + 1, ?::text, ?::timestamp, ?::numeric, ?::int, ?::text is null, ?::bigint";
        try (Connection c = connect(); PreparedStatement ps = c.prepareStatement(sql)) {
            // 8 runs: pgjdbc switches to a named server-side statement after prepareThreshold (5).
            for (int i = 0; i < 8; i++) {
                ps.setInt(1, 41 + i);
                ps.setString(2, "héllo " + i);
                ps.setObject(3, ts.plusDays(i));
                ps.setBigDecimal(4, amount.add(BigDecimal.valueOf(i)));
                ps.setNull(5, Types.INTEGER);
                ps.setNull(6, Types.VARCHAR);
                ps.setLong(7, -9_000_000_000L - i);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), "no row, run " + i);
                    expectEq(rs.getInt(1), 42 + i, "int, run " + i);
                    expectEq(rs.getString(2), "héllo " + i, "text, run " + i);
                    expectEq(rs.getObject(3, LocalDateTime.class), ts.plusDays(i), "timestamp, run " + i);
                    expectEq(rs.getTimestamp(3), Timestamp.valueOf(ts.plusDays(i)), "java.sql.Timestamp, run " + i);
                    expectEq(rs.getBigDecimal(4), amount.add(BigDecimal.valueOf(i)), "numeric, run " + i);
                    expectEq(rs.getObject(5), null, "null int, run " + i);
                    expect(rs.wasNull(), "wasNull after null int, run " + i);
                    expectEq(rs.getBoolean(6), true, "null text is null, run " + i);
                    expectEq(rs.getLong(7), -9_000_000_000L - i, "bigint, run " + i);
                    expect(!rs.next(), "more than one row, run " + i);
                }
            }
            // The same through setObject with explicit SQL types, and a timestamp parameter
            // compared server-side.
            try (PreparedStatement p2 = c.prepareStatement(
                    "select ? = timestamp '2024-02-29 12:34:56.789', ? + 0.5, ?")) {
                p2.setTimestamp(1, Timestamp.valueOf(ts));
                p2.setObject(2, new BigDecimal("1.25"), Types.NUMERIC);
                p2.setObject(3, null, Types.TIMESTAMP);
                try (ResultSet rs = p2.executeQuery()) {
                    expect(rs.next(), "no row from the setObject query");
                    expectEq(rs.getBoolean(1), true, "timestamp parameter compared server-side");
                    expectEq(rs.getBigDecimal(2), new BigDecimal("1.75"), "numeric parameter arithmetic");
                    expectEq(rs.getTimestamp(3), null, "null timestamp");
                }
            }
            // A server-side error through a prepared statement leaves the connection usable.
            try (PreparedStatement p3 = c.prepareStatement("select ?::int / 0")) {
                p3.setInt(1, 1);
                SQLException e = mustFail("?::int / 0", () -> p3.executeQuery().close());
                expectEq(e.getSQLState(), "22012", "division by zero sqlstate");
            }
            expectEq(scalar(c, "select 2"), 2, "select after error");
        }
    }

    static void batchInserts() throws Exception {
        String t = "weir_jdbc_batch_" + PID;
        try (Connection c = connect()) {
            exec(c, "create table " + t + " (id int primary key, name text, amount numeric, at timestamp)");
            try {
                // Prepared-statement batch, autocommit on.
                try (PreparedStatement ps = c.prepareStatement("insert into " + t + " values (?, ?, ?, ?)")) {
                    for (int i = 1; i <= 100; i++) {
                        ps.setInt(1, i);
                        ps.setString(2, "row " + i);
                        ps.setBigDecimal(3, BigDecimal.valueOf(i, 2));
                        ps.setObject(4, LocalDateTime.of(2024, 1, 1, 0, 0).plusMinutes(i));
                        ps.addBatch();
                    }
                    int[] counts = ps.executeBatch();
                    expectEq(counts.length, 100, "batch result length");
                    for (int i = 0; i < counts.length; i++) {
                        expectEq(counts[i], 1, "update count of batch entry " + i);
                    }
                }
                expectEq(scalar(c, "select count(*) from " + t), 100L, "rows after prepared batch");
                expectEq(scalar(c, "select sum(id) from " + t), 5050L, "sum(id) after prepared batch");
                expectEq(scalar(c, "select sum(amount) from " + t), new BigDecimal("50.50"), "sum(amount)");

                // Statement batch of literal SQL, in a transaction.
                c.setAutoCommit(false);
                try (Statement st = c.createStatement()) {
                    st.addBatch("insert into " + t + " values (101, 'a', 1, null)");
                    st.addBatch("insert into " + t + " values (102, 'b', 2, null)");
                    st.addBatch("update " + t + " set name = name || '!' where id <= 3");
                    st.addBatch("delete from " + t + " where id = 100");
                    expectEq(st.executeBatch(), new int[] {1, 1, 3, 1}, "statement batch counts");
                }
                c.commit();
                c.setAutoCommit(true);
                expectEq(scalar(c, "select count(*) from " + t), 101L, "rows after statement batch");
                expectEq(scalar(c, "select name from " + t + " where id = 2"), "row 2!", "updated row");

                // A failing batch: the duplicate key aborts it, and nothing of it is kept.
                c.setAutoCommit(false);
                try (PreparedStatement ps = c.prepareStatement("insert into " + t + " (id, name) values (?, ?)")) {
                    for (int id : new int[] {200, 201, 1, 202}) {
                        ps.setInt(1, id);
                        ps.setString(2, "dup?");
                        ps.addBatch();
                    }
                    SQLException e = mustFail("batch with a duplicate key", ps::executeBatch);
                    expect(e instanceof BatchUpdateException, "not a BatchUpdateException: " + e);
                    expectEq(e.getSQLState(), "23505", "duplicate key sqlstate");
                }
                c.rollback();
                c.setAutoCommit(true);
                expectEq(scalar(c, "select count(*) from " + t + " where id >= 200"), 0L, "rows of the failed batch");

                // reWriteBatchedInserts: pgjdbc folds the batch into multi-row VALUES.
                try (Connection r = connect("reWriteBatchedInserts", "true");
                        PreparedStatement ps = r.prepareStatement("insert into " + t + " (id, name) values (?, ?)")) {
                    for (int i = 1000; i < 1250; i++) {
                        ps.setInt(1, i);
                        ps.setString(2, "rw " + i);
                        ps.addBatch();
                    }
                    int[] counts = ps.executeBatch();
                    expectEq(counts.length, 250, "rewritten batch result length");
                    for (int n : counts) {
                        expect(n == 1 || n == Statement.SUCCESS_NO_INFO, "rewritten batch count " + n);
                    }
                }
                expectEq(scalar(c, "select count(*) from " + t + " where id >= 1000"), 250L, "rows after rewritten batch");
            } finally {
                if (!c.getAutoCommit()) {
                    c.rollback();
                    c.setAutoCommit(true);
                }
                exec(c, "drop table if exists " + t);
            }
        }
    }

    static Set<String> column(ResultSet rs, String label) throws SQLException {
        Set<String> out = new HashSet<>();
        try (rs) {
            while (rs.next()) {
                out.add(rs.getString(label));
            }
        }
        return out;
    }

    static void metadataBrowsing() throws Exception {
        String parent = "weir_jdbc_parent_" + PID;
        String child = "weir_jdbc_child_" + PID;
        String view = "weir_jdbc_view_" + PID;
        String fn = "weir_jdbc_fn_" + PID;
        String proc = "weir_jdbc_proc_" + PID;
        try (Connection c = connect()) {
            exec(c, "create table " + parent + " (id int primary key, name text not null)");
            exec(c, "create table " + child + " (id bigint generated always as identity primary key, "
                    + "parent_id int references " + parent + "(id), note varchar(40), created timestamptz default now())");
            exec(c, "create index " + child + "_note_idx on " + child + " (note)");
            exec(c, "create view " + view + " as select id, name from " + parent);
            exec(c, "create function " + fn + "(x int) returns int language sql immutable as 'select x + 1'");
            exec(c, "create procedure " + proc + "(x int) language sql as 'select x'");
            exec(c, "comment on table " + parent + " is 'weir jdbc parent'");
            try {
                DatabaseMetaData md = c.getMetaData();
                // What DBeaver reads on connect and when the navigator opens a schema.
                expect(column(md.getCatalogs(), "TABLE_CAT").contains(env("WEIR_DB")), "getCatalogs misses the database");
                Set<String> schemas = column(md.getSchemas(), "TABLE_SCHEM");
                for (String s : new String[] {"public", "pg_catalog", "information_schema"}) {
                    expect(schemas.contains(s), "getSchemas misses " + s + ": " + schemas);
                }
                expect(column(md.getSchemas(null, "pub%"), "TABLE_SCHEM").equals(Set.of("public")), "getSchemas(pub%)");
                expect(column(md.getTableTypes(), "TABLE_TYPE").contains("TABLE"), "getTableTypes misses TABLE");
                // A few of DBeaver's own queries on connect.
                expectEq(scalar(c, "select current_schema()"), "public", "current_schema()");
                expect(String.valueOf(scalar(c, "show search_path")).contains("public"), "search_path");
                Object keywords = scalar(c, "select string_agg(word, ',') from pg_catalog.pg_get_keywords()");
                expect(String.valueOf(keywords).contains("select"), "pg_get_keywords()");
                expect(!md.getSQLKeywords().isEmpty(), "getSQLKeywords is empty");

                Map<String, String> tables = new LinkedHashMap<>();
                try (ResultSet rs = md.getTables(null, "public", "weir_jdbc_%_" + PID, new String[] {"TABLE", "VIEW"})) {
                    while (rs.next()) {
                        tables.put(rs.getString("TABLE_NAME"), rs.getString("TABLE_TYPE"));
                        if (rs.getString("TABLE_NAME").equals(parent)) {
                            expectEq(rs.getString("REMARKS"), "weir jdbc parent", "table remarks");
                        }
                    }
                }
                expectEq(tables, Map.of(parent, "TABLE", child, "TABLE", view, "VIEW"), "getTables");

                List<String> cols = new ArrayList<>();
                try (ResultSet rs = md.getColumns(null, "public", child, "%")) {
                    while (rs.next()) {
                        cols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME") + ":"
                                + rs.getString("IS_NULLABLE") + ":" + rs.getString("IS_AUTOINCREMENT"));
                        if (rs.getString("COLUMN_NAME").equals("note")) {
                            expectEq(rs.getInt("COLUMN_SIZE"), 40, "varchar(40) column size");
                            expectEq(rs.getInt("DATA_TYPE"), Types.VARCHAR, "varchar data type");
                        }
                    }
                }
                expectEq(cols, List.of("id:int8:NO:YES", "parent_id:int4:YES:NO", "note:varchar:YES:NO",
                        "created:timestamptz:YES:NO"), "getColumns");

                try (ResultSet rs = md.getPrimaryKeys(null, "public", parent)) {
                    expect(rs.next(), "getPrimaryKeys: no row");
                    expectEq(rs.getString("COLUMN_NAME"), "id", "primary key column");
                    expectEq(rs.getString("PK_NAME"), parent + "_pkey", "primary key name");
                    expect(!rs.next(), "getPrimaryKeys: more than one row");
                }
                try (ResultSet rs = md.getImportedKeys(null, "public", child)) {
                    expect(rs.next(), "getImportedKeys: no row");
                    expectEq(rs.getString("PKTABLE_NAME") + "." + rs.getString("PKCOLUMN_NAME") + " <- "
                            + rs.getString("FKCOLUMN_NAME"), parent + ".id <- parent_id", "foreign key");
                }
                expect(column(md.getExportedKeys(null, "public", parent), "FKTABLE_NAME").equals(Set.of(child)),
                        "getExportedKeys");
                Set<String> indexes = column(md.getIndexInfo(null, "public", child, false, true), "INDEX_NAME");
                expectEq(indexes, Set.of(child + "_pkey", child + "_note_idx"), "getIndexInfo");
                Set<String> unique = column(md.getIndexInfo(null, "public", child, true, true), "INDEX_NAME");
                expectEq(unique, Set.of(child + "_pkey"), "getIndexInfo(unique)");

                Set<String> types = column(md.getTypeInfo(), "TYPE_NAME");
                for (String ty : new String[] {"int4", "int8", "text", "numeric", "timestamp", "bool", "bytea"}) {
                    expect(types.contains(ty), "getTypeInfo misses " + ty);
                }
                // On PostgreSQL 11+ pgjdbc lists functions (prokind 'f') and procedures ('p') apart.
                String both = "weir_jdbc_%_" + PID;
                expectEq(column(md.getFunctions(null, "public", both), "FUNCTION_NAME"), Set.of(fn), "getFunctions");
                expectEq(column(md.getProcedures(null, "public", both), "PROCEDURE_NAME"), Set.of(proc), "getProcedures");
                List<String> fcols = new ArrayList<>();
                try (ResultSet rs = md.getFunctionColumns(null, "public", fn, "%")) {
                    while (rs.next()) {
                        fcols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                    }
                }
                expectEq(fcols, List.of("returnValue:int4", "x:int4"), "getFunctionColumns");
                // Column metadata of a result, as a result grid shows it.
                try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("select * from " + child)) {
                    ResultSetMetaData rmd = rs.getMetaData();
                    expectEq(rmd.getColumnCount(), 4, "result column count");
                    expectEq(rmd.getTableName(2), child, "result column table");
                    expectEq(rmd.isAutoIncrement(1), true, "identity column is auto-increment");
                    expectEq(rmd.isNullable(1), ResultSetMetaData.columnNoNulls, "identity column nullability");
                }
            } finally {
                exec(c, "drop function if exists " + fn + "(int)");
                exec(c, "drop procedure if exists " + proc + "(int)");
                exec(c, "drop view if exists " + view);
                exec(c, "drop table if exists " + child);
                exec(c, "drop table if exists " + parent);
            }
        }
    }

    static void serverSideCursor() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.setFetchSize(10);
                try (ResultSet rs = st.executeQuery("select g, md5(g::text) from generate_series(1, 1000) g")) {
                    long n = 0;
                    long sum = 0;
                    int last = 0;
                    while (rs.next()) {
                        n++;
                        last = rs.getInt(1);
                        sum += last;
                        if (last == 500) {
                            expectEq(rs.getString(2), "cee631121c2ec9232f3a2f028ad5c89b", "md5 of row 500");
                        }
                    }
                    expectEq(n, 1000L, "cursor row count");
                    expectEq(last, 1000, "last row");
                    expectEq(sum, 500500L, "sum of rows");
                }
            }
            // A prepared statement with a parameter, past the prepare threshold, and two portals
            // open at once.
            try (PreparedStatement ps = c.prepareStatement("select g from generate_series(1, ?) g")) {
                ps.setFetchSize(7);
                for (int run = 0; run < 6; run++) {
                    ps.setInt(1, 100 + run);
                    try (ResultSet rs = ps.executeQuery(); Statement other = c.createStatement()) {
                        other.setFetchSize(3);
                        try (ResultSet rs2 = other.executeQuery("select g from generate_series(1, 10) g")) {
                            int n = 0;
                            int m = 0;
                            while (rs.next()) {
                                n++;
                                expectEq(rs.getInt(1), n, "prepared cursor row, run " + run);
                                if (rs2.next()) {
                                    m++;
                                    expectEq(rs2.getInt(1), m, "interleaved cursor row, run " + run);
                                }
                            }
                            expectEq(n, 100 + run, "prepared cursor row count, run " + run);
                            expectEq(m, 10, "interleaved cursor row count, run " + run);
                        }
                    }
                }
            }
            c.commit();
            c.setAutoCommit(true);
            expectEq(scalar(c, "select 1"), 1, "select after cursors");
        }
    }

    static void transactions() throws Exception {
        String t = "weir_jdbc_tx_" + PID;
        try (Connection c = connect()) {
            exec(c, "create table " + t + " (id int primary key)");
            try {
                c.setAutoCommit(false);
                exec(c, "insert into " + t + " values (1)");
                c.commit();
                exec(c, "insert into " + t + " values (2)");
                c.rollback();
                exec(c, "insert into " + t + " values (3)");
                java.sql.Savepoint sp = c.setSavepoint();
                exec(c, "insert into " + t + " values (4)");
                c.rollback(sp);
                exec(c, "insert into " + t + " values (5)");
                c.commit();
                List<Integer> ids = new ArrayList<>();
                try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("select id from " + t + " order by id")) {
                    while (rs.next()) {
                        ids.add(rs.getInt(1));
                    }
                }
                expectEq(ids, List.of(1, 3, 5), "ids after commit/rollback/savepoint");
                c.commit();
                c.setReadOnly(true);
                SQLException e = mustFail("insert in a read-only transaction", () -> exec(c, "insert into " + t + " values (6)"));
                expectEq(e.getSQLState(), "25006", "read-only transaction sqlstate");
                c.rollback();
                c.setReadOnly(false);
            } finally {
                if (!c.getAutoCommit()) {
                    c.rollback();
                    c.setAutoCommit(true);
                }
                exec(c, "drop table if exists " + t);
            }
        }
    }

    static void denial() throws Exception {
        String t = "weir_jdbc_deny_" + PID;
        try (Connection c = connect()) {
            // A statement that does not parse never reaches the server: Weir denies it (fail
            // closed), as the psycopg check does.
            SQLException e = mustFail("selec 1", () -> exec(c, "selec 1"));
            if (!THROUGH_WEIR) {
                // A plain server: a syntax error, and nothing here is denied.
                expectEq(e.getSQLState(), "42601", "syntax error sqlstate");
                return;
            }
            expectDenied(e, "weir.parse", "unparsable statement");
            expectEq(scalar(c, "select 1"), 1, "select after denial");
            // A policy denial (reading server files is reserved to admins), through a prepared
            // statement with a parameter, before and after the server-side prepare threshold.
            try (PreparedStatement ps = c.prepareStatement("select pg_read_file(?)")) {
                for (int i = 0; i < 6; i++) {
                    ps.setString(1, "/etc/hostname");
                    e = mustFail("pg_read_file(?) run " + i, () -> ps.executeQuery().close());
                    expectDenied(e, "weir.server-files-and-programs", "pg_read_file run " + i);
                }
            }
            e = mustFail("plain pg_read_file", () -> exec(c, "select pg_read_file('/etc/hostname')"));
            expectDenied(e, "weir.server-files-and-programs", "plain pg_read_file");
            // Inside a transaction the denial aborts it, as a failed statement would.
            exec(c, "create table " + t + " (id int)");
            try {
                c.setAutoCommit(false);
                exec(c, "insert into " + t + " values (1)");
                e = mustFail("denied statement in a transaction", () -> exec(c, "select pg_read_file('/etc/hostname')"));
                expectDenied(e, "weir.server-files-and-programs", "denial in a transaction");
                e = mustFail("statement after the denial", () -> exec(c, "select 1"));
                expectEq(e.getSQLState(), "25P02", "in-failed-transaction sqlstate");
                c.rollback();
                c.setAutoCommit(true);
                expectEq(scalar(c, "select count(*) from " + t), 0L, "rows of the aborted transaction");
            } finally {
                if (!c.getAutoCommit()) {
                    c.rollback();
                    c.setAutoCommit(true);
                }
                exec(c, "drop table if exists " + t);
            }
        }
    }

    static final Object[] MASKED_ROW = {1, "j***@example.com", "**** **** **** 1111", null, "****", "J***@EXAMPLE.COM"};

    static final int TEXT = 0;
    static final int BINARY = 1;

    /**
     * Reads the one row of the masking query. `format` is the wire format pgjdbc must have got
     * the int4 and date columns in (TEXT or BINARY; null: not checked), so that the masked
     * values are known to have been checked in that format.
     */
    static void expectMaskedRow(ResultSet rs, String what, Integer format) throws SQLException {
        expect(rs.next(), what + ": no row");
        if (format != null) {
            org.postgresql.PGResultSetMetaData md = rs.getMetaData().unwrap(org.postgresql.PGResultSetMetaData.class);
            expectEq(md.getFormat(1) + "," + md.getFormat(4), format + "," + format, what + ": result formats (0 text, 1 binary)");
        }
        Object[] row = {rs.getInt(1), rs.getString(2), rs.getString(3), rs.getObject(4, LocalDate.class),
            rs.getString(5), rs.getString(6)};
        expect(!rs.next(), what + ": more than one row");
        if (!THROUGH_WEIR) {
            return;
        }
        expectEq(row, MASKED_ROW, what);
        for (Object v : row) {
            String s = String.valueOf(v).toLowerCase();
            expect(!s.contains("jane") && !s.contains("omar"), what + ": clear value reached the client: " + v);
        }
    }

    static void maskedResults() throws Exception {
        // Through Weir (WEIR_MASKING=1): sensitive columns come back masked and still valid for
        // their types; a text column with an address inside is masked by content. Against a
        // plain server this check only reads the rows. Same table and values as the psycopg check.
        String t = "weir_jdbc_mask_" + PID;
        String q = "select id, email, card_number, birth_date, remark, upper(email) from " + t + " where id = ";
        try (Connection c = connect()) {
            exec(c, "create table " + t + " (id int, email text, card_number text, birth_date date, remark text)");
            try {
                exec(c, "insert into " + t + " values (1, 'jane.doe@example.com', '4111 1111 1111 1111', "
                        + "'1984-02-29', 'write to omar@corp.example')");
                try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(q + "1")) {
                    expectMaskedRow(rs, "plain statement", TEXT);
                }
                // From the 5th execution (prepareThreshold) pgjdbc uses a named server-side
                // statement, and from the 6th it asks for binary results (int4, date; text stays
                // text).
                try (PreparedStatement ps = c.prepareStatement(q + "?")) {
                    for (int i = 0; i < 8; i++) {
                        ps.setInt(1, 1);
                        try (ResultSet rs = ps.executeQuery()) {
                            expectMaskedRow(rs, "prepared statement run " + i, i < 5 ? TEXT : BINARY);
                        }
                    }
                }
                // Server-side cursor: fetch size 1 in a transaction.
                c.setAutoCommit(false);
                try (PreparedStatement ps = c.prepareStatement("select id, email, card_number, birth_date, remark, "
                        + "upper(email) from " + t + " where id >= ?")) {
                    ps.setFetchSize(1);
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        expectMaskedRow(rs, "cursor with fetch size 1", null);
                    }
                }
                c.commit();
                c.setAutoCommit(true);
            } finally {
                if (!c.getAutoCommit()) {
                    c.rollback();
                    c.setAutoCommit(true);
                }
            }
            // Server-prepared from the second execution (1) or the first (-1, binary results at
            // once); the simple query protocol; text results only.
            for (String[] extra : new String[][] {{"prepareThreshold", "1"}, {"prepareThreshold", "-1"},
                {"preferQueryMode", "simple"}, {"binaryTransfer", "false"}}) {
                String what = extra[0] + "=" + extra[1];
                boolean textOnly = extra[0].equals("preferQueryMode") || extra[0].equals("binaryTransfer");
                try (Connection p = connect(extra)) {
                    for (int i = 0; i < 3; i++) {
                        try (PreparedStatement ps = p.prepareStatement(q + "?")) {
                            ps.setInt(1, 1);
                            try (ResultSet rs = ps.executeQuery()) {
                                expectMaskedRow(rs, what + " prepared run " + i,
                                        textOnly ? Integer.valueOf(TEXT) : extra[1].equals("-1") || i > 0 ? BINARY : TEXT);
                            }
                        }
                        try (Statement st = p.createStatement(); ResultSet rs = st.executeQuery(q + "1")) {
                            expectMaskedRow(rs, what + " statement run " + i, textOnly ? Integer.valueOf(TEXT) : null);
                        }
                    }
                }
            }
        } finally {
            try (Connection c = connect()) {
                exec(c, "drop table if exists " + t);
            }
        }
    }

    static void largeObjects() throws Exception {
        // LargeObjectManager calls lo_creat, lo_open, lowrite, lo_lseek, loread, lo_close and
        // lo_unlink through the fastpath FunctionCall message.
        byte[] data = new byte[100_000];
        for (int i = 0; i < data.length; i++) {
            data[i] = (byte) (i * 31 + 7);
        }
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            org.postgresql.largeobject.LargeObjectManager lom =
                c.unwrap(org.postgresql.PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO(org.postgresql.largeobject.LargeObjectManager.READWRITE);
            try (org.postgresql.largeobject.LargeObject lo =
                    lom.open(oid, org.postgresql.largeobject.LargeObjectManager.READWRITE)) {
                lo.write(data);
                lo.seek(0);
                byte[] back = lo.read(data.length);
                expect(Arrays.equals(back, data), "read back differs from what was written");
                expectEq(lo.size(), data.length, "size");
            }
            c.commit();
            expectEq(scalar(c, "select count(*) from pg_largeobject_metadata where oid = " + oid), 1L, "stored");
            lom.delete(oid);
            c.commit();
            expectEq(scalar(c, "select count(*) from pg_largeobject_metadata where oid = " + oid), 0L, "deleted");
            c.commit();
        }
    }

    static void sslStatus() throws Exception {
        // pgjdbc has no public "is this connection encrypted" call: look at its socket.
        String mode = System.getenv("WEIR_SSLMODE");
        try (Connection c = connect()) {
            Object qe = c.unwrap(org.postgresql.core.BaseConnection.class).getQueryExecutor();
            Field f = null;
            for (Class<?> k = qe.getClass(); k != null && f == null; k = k.getSuperclass()) {
                try {
                    f = k.getDeclaredField("pgStream");
                } catch (NoSuchFieldException ignored) {
                    // look in the superclass
                }
            }
            expect(f != null, "cannot find pgjdbc's pgStream field (driver internals changed?)");
            f.setAccessible(true);
            Object stream = f.get(qe);
            Socket socket = (Socket) stream.getClass().getMethod("getSocket").invoke(stream);
            boolean tls = socket instanceof javax.net.ssl.SSLSocket;
            if (mode != null && (mode.equals("require") || mode.startsWith("verify"))) {
                expect(tls, "WEIR_SSLMODE=" + mode + " but the connection is not encrypted");
            }
            if ("disable".equals(mode)) {
                expect(!tls, "sslmode=disable but the connection is encrypted");
            }
        }
    }

    // ------------------------------------------------------------------ runner

    public static void main(String[] args) {
        Set<String> only = new HashSet<>(Arrays.asList(args));
        for (String name : only) {
            if (!CHECKS.containsKey(name)) {
                System.out.println("FAIL setup: no check named " + name + " (checks: " + CHECKS.keySet() + ")");
                System.out.println("0 passed, 1 failed");
                System.exit(1);
            }
        }
        int passed = 0;
        int failed = 0;
        for (Map.Entry<String, Check> check : CHECKS.entrySet()) {
            if (!only.isEmpty() && !only.contains(check.getKey())) {
                continue;
            }
            try {
                check.getValue().run();
                passed++;
                System.out.println("ok " + check.getKey());
            } catch (CheckFailed e) {
                failed++;
                System.out.println("FAIL " + check.getKey() + ": " + e.getMessage());
            } catch (Throwable e) {
                failed++;
                String state = e instanceof SQLException ? " [SQLSTATE " + ((SQLException) e).getSQLState() + "]" : "";
                System.out.println("FAIL " + check.getKey() + ": " + e.getClass().getSimpleName() + state + ": "
                        + e.getMessage());
                e.printStackTrace(System.out);
            }
            System.out.flush();
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 && passed > 0 ? 0 : 1);
    }
}
