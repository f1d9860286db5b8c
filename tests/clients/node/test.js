#!/usr/bin/env node
'use strict'
// Driver conformance checks for Weir, using node-postgres (`pg`).
//
// Exercises a PostgreSQL server (normally: the Weir gateway in front of one)
// through the connection described by the environment:
//
//   WEIR_HOST, WEIR_PORT, WEIR_USER, WEIR_PASSWORD, WEIR_DB
//   WEIR_SSLMODE (optional): disable | prefer (default; pg then uses no TLS)
//                            | require | verify-ca | verify-full
//   WEIR_SSLROOTCERT (optional): CA file for verify-ca / verify-full
//
// Prints "ok <name>" per passing check, "FAIL <name>: <reason>" per failing
// one, and finally "N passed, M failed". Exits 0 only if every check passed.
//
// Setup: npm ci (or npm install) in this directory, then: node test.js [check...]

const assert = require('node:assert/strict')
const fs = require('node:fs')
const { pipeline } = require('node:stream/promises')
const { Readable, Writable } = require('node:stream')

let pg, copyFrom, copyTo, Cursor
try {
  pg = require('pg')
  ;({ from: copyFrom, to: copyTo } = require('pg-copy-streams'))
  Cursor = require('pg-cursor')
} catch (e) {
  console.log(`FAIL setup: node modules missing (run npm ci in ${__dirname}): ${e.message}`)
  console.log('0 passed, 1 failed')
  process.exit(1)
}

const PID = process.pid
const COPY_ROWS = 10000

function config(extra = {}) {
  const missing = ['WEIR_HOST', 'WEIR_PORT', 'WEIR_USER', 'WEIR_DB'].filter((v) => !process.env[v])
  if (missing.length) {
    console.log(`FAIL setup: missing environment variables: ${missing.join(', ')}`)
    console.log('0 passed, 1 failed')
    process.exit(1)
  }
  const cfg = {
    host: process.env.WEIR_HOST,
    port: Number(process.env.WEIR_PORT),
    user: process.env.WEIR_USER,
    password: process.env.WEIR_PASSWORD,
    database: process.env.WEIR_DB,
    application_name: 'weir-node-pg-test',
    connectionTimeoutMillis: 10000,
    ssl: false,
  }
  const mode = process.env.WEIR_SSLMODE || 'prefer'
  if (mode === 'require') {
    cfg.ssl = { rejectUnauthorized: false }
  } else if (mode === 'verify-ca' || mode === 'verify-full') {
    cfg.ssl = { rejectUnauthorized: true }
    if (process.env.WEIR_SSLROOTCERT) cfg.ssl.ca = fs.readFileSync(process.env.WEIR_SSLROOTCERT)
    if (mode === 'verify-ca') cfg.ssl.checkServerIdentity = () => undefined
  } else if (mode !== 'disable' && mode !== 'prefer' && mode !== 'allow') {
    throw new Error(`unsupported WEIR_SSLMODE=${mode}`)
  }
  return Object.assign(cfg, extra)
}

async function connect(extra) {
  const client = new pg.Client(config(extra))
  await client.connect()
  return client
}

async function withClient(fn, extra) {
  const client = await connect(extra)
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

async function expectError(promise, code, what) {
  try {
    await promise
  } catch (err) {
    assert.equal(err.code, code, `${what}: expected SQLSTATE ${code}, got ${err.code} (${err.message})`)
    return err
  }
  assert.fail(`${what}: expected an error with SQLSTATE ${code}, but it succeeded`)
}

const ident = (s) => pg.Client.prototype.escapeIdentifier(s)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const checks = []
const check = (name, fn) => checks.push({ name, fn })

// ------------------------------------------------------------------ checks

check('connect_and_simple_query', () =>
  withClient(async (c) => {
    // No values -> simple query protocol.
    const r = await c.query('select 1 as one')
    assert.deepEqual(r.rows, [{ one: 1 }])
    assert.equal(r.command, 'SELECT')
    assert.equal(r.rowCount, 1)
    // Several statements in one simple query give several results.
    const multi = await c.query("select 1 as a; select 'two' as b")
    assert.ok(Array.isArray(multi), 'multi-statement query should return an array of results')
    assert.deepEqual(
      multi.map((x) => x.rows),
      [[{ a: 1 }], [{ b: 'two' }]]
    )
    assert.ok(c.processID > 0, 'BackendKeyData processID missing')
    const v = await c.query('show server_version')
    assert.match(v.rows[0].server_version, /^\d+/)
  })
)

check('parameterized_query', () =>
  withClient(async (c) => {
    const r = await c.query('select $1::int + $2::int as sum, $3::text as t, $4::text as n', [40, 2, 'héllo', null])
    assert.deepEqual(r.rows, [{ sum: 42, t: 'héllo', n: null }])
    // Extended protocol forced even without parameters.
    const r2 = await c.query({ text: 'select 7 as x', queryMode: 'extended' })
    assert.deepEqual(r2.rows, [{ x: 7 }])
    const many = await c.query('select g from generate_series(1, $1::int) g', [1000])
    assert.equal(many.rowCount, 1000)
    assert.equal(many.rows[999].g, 1000)
  })
)

check('named_prepared_statement', () =>
  withClient(async (c) => {
    const name = `weir_stmt_${PID}`
    for (let i = 0; i < 3; i++) {
      const r = await c.query({ name, text: 'select $1::int * 2 as d, $2::text as s', values: [i, `v${i}`] })
      assert.deepEqual(r.rows, [{ d: i * 2, s: `v${i}` }], `run ${i}`)
    }
    const ps = await c.query('select name, statement from pg_prepared_statements where name = $1', [name])
    assert.equal(ps.rowCount, 1, 'named statement not found in pg_prepared_statements')
    // A second named statement alongside the first one.
    const r = await c.query({ name: `${name}_b`, text: 'select $1::text as x', values: ['b'] })
    assert.deepEqual(r.rows, [{ x: 'b' }])
    const r2 = await c.query({ name, text: 'select $1::int * 2 as d, $2::text as s', values: [21, 'again'] })
    assert.deepEqual(r2.rows, [{ d: 42, s: 'again' }])
  })
)

check('binary_results', () =>
  withClient(async (c) => {
    const r = await c.query({
      // node-postgres decodes every DataRow value as UTF-8 before handing it
      // to a binary parser, so binary values are only exact when each of
      // their bytes is < 0x80: the values below are chosen for that. (float8
      // and bytea are left out: no exact binary parser for them in pg-types.)
      text: `select $1::int4 as i, $2::text as t, 9000000000::int8 as big, true as b,
                    null::int4 as n, array[1,2,3]::int4[] as arr`,
      values: [42, 'héllo'],
      binary: true,
    })
    for (const f of r.fields) assert.equal(f.format, 'binary', `column ${f.name} not binary`)
    const row = r.rows[0]
    assert.equal(row.i, 42)
    assert.equal(row.t, 'héllo')
    assert.equal(String(row.big), '9000000000')
    assert.equal(row.b, true)
    assert.equal(row.n, null)
    assert.deepEqual(row.arr, [1, 2, 3])
    // Override the parsers: receive the raw binary bytes.
    const raw = await c.query({
      text: 'select $1::int4 as i',
      values: [258],
      binary: true,
      types: { getTypeParser: () => (buf) => buf },
    })
    assert.deepEqual([...raw.rows[0].i], [0, 0, 1, 2])
    // Many binary rows (values kept below 128, see above).
    const many = await c.query({
      text: 'select (g % 128)::int4 as g, g::text as s from generate_series(1, 500) g',
      binary: true,
      queryMode: 'extended', // no values would otherwise mean simple protocol (text only)
    })
    assert.equal(many.rowCount, 500)
    for (const f of many.fields) assert.equal(f.format, 'binary', `column ${f.name} not binary`)
    many.rows.forEach((row, i) => assert.deepEqual(row, { g: (i + 1) % 128, s: String(i + 1) }, `binary row ${i}`))
  })
)

check('transactions', () =>
  withClient(async (c) => {
    const t = ident(`weir_tx_node_${PID}`)
    await c.query(`create table ${t} (id int primary key, v text)`)
    try {
      await c.query('begin')
      await c.query(`insert into ${t} values (1, 'committed')`)
      await c.query('commit')

      await c.query('begin')
      await c.query(`insert into ${t} values (2, 'rolled back')`)
      await c.query('rollback')

      await c.query('begin')
      await c.query(`insert into ${t} values (3, 'outer')`)
      await c.query('savepoint sp')
      await c.query(`insert into ${t} values (4, 'inner')`)
      await c.query('rollback to savepoint sp')
      await c.query('commit')

      const ids = await c.query(`select id from ${t} order by id`)
      assert.deepEqual(
        ids.rows.map((r) => r.id),
        [1, 3]
      )

      // Error mid-transaction -> failed state -> rollback recovers.
      await c.query('begin')
      await c.query(`insert into ${t} values (10, 'x')`)
      await expectError(c.query('select 1/0'), '22012', 'division by zero in transaction')
      await expectError(c.query('select 1'), '25P02', 'statement in failed transaction')
      await expectError(c.query('select $1::int', [1]), '25P02', 'extended statement in failed transaction')
      // COMMIT of a failed transaction turns into ROLLBACK.
      const end = await c.query('commit')
      assert.equal(end.command, 'ROLLBACK')
      const n = await c.query(`select count(*)::int as n from ${t} where id = 10`)
      assert.equal(n.rows[0].n, 0)
      assert.deepEqual((await c.query('select 1 as x')).rows, [{ x: 1 }])
    } finally {
      await c.query('rollback').catch(() => {})
      await c.query(`drop table if exists ${t}`)
    }
  })
)

check('copy_from_and_to', () =>
  withClient(async (c) => {
    const t = ident(`weir_copy_node_${PID}`)
    await c.query(`create table ${t} (id int, name text, data bytea)`)
    try {
      const line = (i) => `${i}\tname ${i}\\tescaped\t\\\\x${(i % 256).toString(16).padStart(2, '0')}00ff\n`
      async function* gen() {
        let chunk = ''
        for (let i = 0; i < COPY_ROWS; i++) {
          chunk += line(i)
          if (chunk.length > 8192) {
            yield chunk
            chunk = ''
          }
        }
        if (chunk) yield chunk
      }
      const inStream = c.query(copyFrom(`COPY ${t} (id, name, data) FROM STDIN`))
      await pipeline(Readable.from(gen()), inStream)
      assert.equal(inStream.rowCount, COPY_ROWS, 'COPY FROM rowCount')

      const agg = await c.query(`select count(*)::int as n, sum(id)::bigint as s from ${t}`)
      assert.equal(agg.rows[0].n, COPY_ROWS)
      assert.equal(String(agg.rows[0].s), String((COPY_ROWS * (COPY_ROWS - 1)) / 2))
      const one = await c.query(`select name, data from ${t} where id = 300`)
      assert.equal(one.rows[0].name, 'name 300\tescaped')
      assert.deepEqual([...one.rows[0].data], [300 % 256, 0, 255])

      // COPY TO STDOUT, text format.
      const chunks = []
      const outStream = c.query(copyTo(`COPY (select id, name, data from ${t} order by id) TO STDOUT`))
      await pipeline(
        outStream,
        new Writable({
          write(chunk, _enc, cb) {
            chunks.push(chunk)
            cb()
          },
        })
      )
      const text = Buffer.concat(chunks).toString('utf8')
      const lines = text.split('\n')
      assert.equal(lines.pop(), '', 'COPY output should end with a newline')
      assert.equal(lines.length, COPY_ROWS, 'COPY TO line count')
      for (let i = 0; i < COPY_ROWS; i += 997) assert.equal(lines[i] + '\n', line(i), `COPY TO line ${i}`)
      assert.equal(outStream.rowCount, COPY_ROWS, 'COPY TO rowCount')

      // COPY TO STDOUT, binary format: check the header and total size is sane.
      const bchunks = []
      await pipeline(
        c.query(copyTo(`COPY (select id from ${t} order by id) TO STDOUT (FORMAT BINARY)`)),
        new Writable({
          write(chunk, _enc, cb) {
            bchunks.push(chunk)
            cb()
          },
        })
      )
      const bin = Buffer.concat(bchunks)
      assert.equal(bin.subarray(0, 11).toString('latin1'), 'PGCOPY\n\xff\r\n\0')
      // header 19 bytes, per row: int16 field count + int32 len + int32 value, trailer int16.
      assert.equal(bin.length, 19 + COPY_ROWS * 10 + 2)

      // A failing COPY FROM must leave the connection usable.
      const bad = c.query(copyFrom(`COPY ${t} (id) FROM STDIN`))
      await expectError(pipeline(Readable.from(['1\nnot-a-number\n']), bad), '22P02', 'bad COPY data')
      assert.deepEqual((await c.query('select 1 as x')).rows, [{ x: 1 }])
    } finally {
      await c.query(`drop table if exists ${t}`)
    }
  })
)

check('cursor', () =>
  withClient(async (c) => {
    // Portal with row limit: Execute(max_rows) / PortalSuspended round trips.
    await c.query('begin')
    const cursor = c.query(new Cursor('select g from generate_series(1, $1::int) g', [1050]))
    let total = 0
    let batches = 0
    for (;;) {
      const rows = await cursor.read(100)
      if (rows.length === 0) break
      assert.equal(rows[0].g, total + 1)
      total += rows.length
      batches++
    }
    await cursor.close()
    await c.query('commit')
    assert.equal(total, 1050)
    assert.equal(batches, 11)
  })
)

check('pipeline_mode', async () => {
  const probe = new pg.Client(config({ pipeline: true }))
  if (!probe.pipeline) {
    // pg < 8.2x has no pipeline option; nothing to check.
    return
  }
  await probe.connect()
  try {
    const results = await Promise.all([
      probe.query('select 1 as x'),
      probe.query('select $1::text as x', ['two']),
      probe.query({ name: `weir_pipe_${PID}`, text: 'select $1::int + 1 as x', values: [2] }),
      probe.query('select 4 as x'),
    ])
    assert.deepEqual(
      results.map((r) => r.rows[0].x),
      [1, 'two', 3, 4]
    )
    // An error in the middle only fails its own query (each has its own Sync).
    const settled = await Promise.allSettled([
      probe.query('select 1 as x'),
      probe.query('select 1/0 as x'),
      probe.query('select 3 as x'),
    ])
    assert.equal(settled[0].status, 'fulfilled')
    assert.equal(settled[1].status, 'rejected')
    assert.equal(settled[1].reason.code, '22012')
    assert.equal(settled[2].status, 'fulfilled')
    assert.equal(settled[2].value.rows[0].x, 3)
  } finally {
    await probe.end()
  }
})

check('cancel', () =>
  withClient(async (c) => {
    const query = new pg.Query('select pg_sleep(30)')
    const done = new Promise((resolve, reject) => {
      query.on('error', reject)
      query.on('end', resolve)
    })
    const start = Date.now()
    c.query(query)
    // A cancel that arrives before the query reaches the server cancels nothing (as with
    // PostgreSQL itself), so wait until the server reports it running.
    const watcher = new pg.Client(config())
    await watcher.connect()
    try {
      for (let i = 0; i < 100; i++) {
        const r = await watcher.query(
          "select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")
        if (r.rows[0].n > 0) break
        await sleep(100)
      }
    } finally {
      await watcher.end()
    }
    // node-postgres cancels by opening a fresh connection from a second
    // (unconnected) Client and sending CancelRequest(processID, secretKey)
    // of the target client.
    // (Client.cancel writes the CancelRequest on the raw TCP socket as soon as
    // it connects, in plaintext, even when the client's config asks for TLS.)
    const canceller = new pg.Client(config())
    const cancelErrors = []
    canceller.connection.on('error', (err) => cancelErrors.push(err))
    const prevNoDeprecation = process.noDeprecation
    process.noDeprecation = true // Client.cancel reads the deprecated activeQuery getter
    try {
      canceller.cancel(c, query)
    } finally {
      process.noDeprecation = prevNoDeprecation
    }
    let timer
    const timeout = new Promise((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error('query was not cancelled within 10 s')), 10000)
    })
    try {
      await expectError(Promise.race([done, timeout]), '57014', 'cancelled pg_sleep')
    } catch (err) {
      if (cancelErrors.length) err.message += ` (cancel connection errors: ${cancelErrors.map((e) => e.message).join('; ')})`
      throw err
    } finally {
      clearTimeout(timer)
    }
    const elapsed = Date.now() - start
    assert.ok(elapsed < 10000, `cancel took ${elapsed} ms`)
    canceller.connection.stream.destroy()
    assert.deepEqual((await c.query('select 1 as x')).rows, [{ x: 1 }], 'connection usable after cancel')
  })
)

check('listen_notify', async () => {
  const chan = `weir_chan_node_${PID}`
  const listener = await connect()
  const sender = await connect()
  try {
    const got = []
    let wake = null
    listener.on('notification', (msg) => {
      got.push(msg)
      if (wake) wake()
    })
    const waitFor = async (n) => {
      const deadline = Date.now() + 10000
      while (got.length < n && Date.now() < deadline) {
        await new Promise((r) => {
          wake = r
          setTimeout(r, 200)
        })
      }
      assert.ok(got.length >= n, `expected ${n} notifications, got ${got.length}`)
    }
    await listener.query(`LISTEN ${ident(chan)}`)
    await sender.query(`NOTIFY ${ident(chan)}, 'payload-1'`)
    await sender.query('select pg_notify($1, $2)', [chan, 'payload-2'])
    await waitFor(2)
    assert.deepEqual(
      got.map((m) => m.payload),
      ['payload-1', 'payload-2']
    )
    assert.ok(got.every((m) => m.channel === chan))
    assert.ok(got.every((m) => m.processId === sender.processID))
    // Notification from inside a transaction is delivered on commit only.
    await sender.query('begin')
    await sender.query('select pg_notify($1, $2)', [chan, 'after-commit'])
    await sleep(200)
    assert.equal(got.length, 2, 'notification delivered before commit')
    await sender.query('commit')
    await waitFor(3)
    assert.equal(got[2].payload, 'after-commit')
    await listener.query(`UNLISTEN ${ident(chan)}`)
  } finally {
    await listener.end()
    await sender.end()
  }
})

check('notices', () =>
  withClient(async (c) => {
    const seen = []
    c.on('notice', (msg) => seen.push([msg.severity, msg.message]))
    await c.query("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
    assert.deepEqual(seen, [['NOTICE', 'hello']])
    await c.query("DO $$ BEGIN RAISE WARNING 'careful %', 42; END $$")
    assert.deepEqual(seen[1], ['WARNING', 'careful 42'])
  })
)

check('error_passthrough', () =>
  withClient(async (c) => {
    const e = await expectError(c.query('select 1/0'), '22012', 'select 1/0')
    assert.equal(e.severity, 'ERROR')
    assert.match(e.message, /division by zero/)
    const e2 = await expectError(c.query('select * from weir_no_such_table_xyz'), '42P01', 'undefined table')
    assert.ok(e2.position, 'error position missing')
    // A statement that does not parse never reaches the server: Weir denies it (fail closed).
    await expectError(c.query('selec 1'), '42501', 'unparsable statement denied')
    await expectError(c.query('select $1::int / 0', [1]), '22012', 'extended 1/0')
    await expectError(c.query({ name: `weir_err_${PID}`, text: 'select $1::int / 0', values: [1] }), '22012', 'named 1/0')
    assert.deepEqual((await c.query('select 1 as x')).rows, [{ x: 1 }])
  })
)

check('ssl_status', () =>
  withClient(async (c) => {
    const encrypted = Boolean(c.connection.stream && c.connection.stream.encrypted)
    const mode = process.env.WEIR_SSLMODE || 'prefer'
    if (['require', 'verify-ca', 'verify-full'].includes(mode)) assert.ok(encrypted, 'TLS expected but not in use')
    if (mode === 'disable') assert.ok(!encrypted, 'TLS in use with sslmode=disable')
  })
)

// ------------------------------------------------------------------ runner

async function main() {
  const only = new Set(process.argv.slice(2))
  let passed = 0
  let failed = 0
  for (const { name, fn } of checks) {
    if (only.size && !only.has(name)) continue
    try {
      await fn()
      passed++
      console.log(`ok ${name}`)
    } catch (err) {
      failed++
      console.log(`FAIL ${name}: ${err && err.message}`)
      if (err && err.stack) console.log(err.stack)
    }
  }
  console.log(`${passed} passed, ${failed} failed`)
  return failed === 0 && passed > 0 ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.log(`FAIL runner: ${err && err.stack}`)
    console.log('0 passed, 1 failed')
    process.exit(1)
  }
)
