// Against real tenantqd processes and PostgreSQL (TQ_BUILD_DIR,
// TQ_TEST_DATABASE from scripts/test): the seed's race over two daemons,
// 500 concurrent calls, SIGKILL mid-load and restart, failover and back,
// the ported executor, and the routing agreement with libtenantq's CLI.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Client, TenantqError, endpointOrder } from "../dist/esm/index.js";
import { updatePageSection, userMessage } from "../examples/storefront-executor.mjs";
import { Daemon, cliBin, createDatabase, psql, sections, sleep, startDaemon } from "./helpers.mjs";

let db;
before(() => { db = createDatabase(); });
after(() => db.drop());

const hero = (id) => ({ page: "home", section: { type: "hero", id } });

test("the seed's race over two daemons: 1 ok, 39 DUPLICATE_SECTION_ID", async () => {
    const [a, b] = await Promise.all([startDaemon(db.conninfo), startDaemon(db.conninfo)]);
    const ca = new Client({ endpoints: [a.endpoint] });
    const cb = new Client({ endpoints: [b.endpoint] });
    try {
        const rs = await Promise.allSettled(Array.from({ length: 40 }, (_, i) =>
            (i % 2 ? ca : cb).storefront.upsertSection("race", hero("home-hero-main"))));
        const codes = rs.map((r) => (r.status === "fulfilled" ? "ok" : r.reason.code));
        assert.equal(codes.filter((c) => c === "ok").length, 1, codes.join());
        assert.equal(codes.filter((c) => c === "DUPLICATE_SECTION_ID").length, 39, codes.join());
        assert.equal(sections(db.conninfo, "race", "home").length, 1);
    } finally {
        await Promise.all([ca.close(), cb.close()]);
        await Promise.all([a.stop(), b.stop()]);
    }
});

test("500 concurrent calls on one client: every acknowledged edit stored once", async () => {
    const d = await startDaemon(db.conninfo);
    const c = new Client({ endpoints: [d.endpoint], timeoutMs: 60000 });
    try {
        const rs = await Promise.all(Array.from({ length: 500 }, (_, i) =>
            c.storefront.upsertSection(`many-${i % 5}`, { page: "p",
                section: { type: "item", id: `s-${i}`, n: i } })));
        assert.equal(rs.length, 500);
        const ids = [];
        for (let t = 0; t < 5; t++)
            ids.push(...sections(db.conninfo, `many-${t}`, "p").map((s) => s.id));
        assert.equal(ids.length, 500);
        assert.equal(new Set(ids).size, 500);
        // the same call with its key again: replayed, stored once
        const key = "k-replay";
        await c.call("many-0", "section.upsert", hero("home-hero-x"), { key });
        const again = await c.callFull("many-0", "section.upsert", hero("home-hero-x"), { key });
        assert.equal(again.replayed, true);
        assert.equal(sections(db.conninfo, "many-0", "home").length, 1);
        const draft = await c.storefront.getDraft("many-0");
        assert.equal(draft.draft.pages.p.sections.length, 100);
    } finally {
        await c.close();
        await d.stop();
    }
});

test("SIGKILL mid-load and restart: every acknowledged edit present exactly once", async () => {
    const d = new Daemon(db.conninfo);
    await d.ready();
    const c = new Client({ endpoints: [d.endpoint], timeoutMs: 8000, attempts: 5 });
    const acked = [];
    let stop = false;
    const worker = async (w) => {
        for (let i = 0; !stop; i++) {
            const id = `w${w}-${i}`;
            try {
                await c.storefront.upsertSection("kill", { page: "p", section: { type: "x", id } });
                acked.push(id);
            } catch (e) {
                assert.ok(e instanceof TenantqError, String(e));
            }
        }
    };
    const workers = Array.from({ length: 16 }, (_, w) => worker(w));
    await sleep(700);
    await d.kill("SIGKILL");
    await sleep(300);
    d.start();
    await d.ready();
    await sleep(700);
    stop = true;
    await Promise.all(workers);
    await c.close();
    await d.stop();
    const stored = sections(db.conninfo, "kill", "p").map((s) => s.id);
    assert.equal(new Set(stored).size, stored.length, "a section stored twice");
    const set = new Set(stored);
    const lost = acked.filter((id) => !set.has(id));
    assert.deepEqual(lost, []);
    assert.ok(acked.length > 50, `only ${acked.length} acknowledged`);
});

test("failover to the next endpoint and back", async () => {
    const a = await startDaemon(db.conninfo);
    const b = await startDaemon(db.conninfo);
    const c = new Client({ endpoints: [a.endpoint, b.endpoint], timeoutMs: 5000 });
    // a tenant whose first choice is a
    let tenant = "";
    for (let i = 0; ; i++)
        if (endpointOrder([a.endpoint, b.endpoint], (tenant = `fo-${i}`))[0] === 0)
            break;
    const served = async () => {
        await c.storefront.ping(tenant);
        const t0 = Date.now();
        await c.storefront.upsertSection(tenant, { page: "p", section: { type: "x" } });
        return Date.now() - t0;
    };
    try {
        await served();
        await a.kill("SIGKILL");
        const t0 = Date.now();
        await c.storefront.upsertSection(tenant, { page: "p", section: { type: "x" } });
        assert.ok(Date.now() - t0 < 3000, "failover took too long");
        a.start();
        await a.ready();
        await sleep(500); // the probe sees it back
        await c.storefront.upsertSection(tenant, { page: "p", section: { type: "x" } });
        // back on a: stopping b does not disturb the tenant
        await b.stop();
        const t1 = Date.now();
        await c.storefront.upsertSection(tenant, { page: "p", section: { type: "x" } });
        assert.ok(Date.now() - t1 < 1000, "the tenant did not come back to its first choice");
        assert.equal(sections(db.conninfo, tenant, "p").length, 4);
    } finally {
        await c.close();
        await a.stop();
        await b.stop().catch(() => {});
    }
});

test("routing agrees with libtenantq: 1,000 tenants reach the same daemon from C and Node",
    async () => {
    // three daemons on three databases: where a tenant's row lands says
    // which daemon served it
    const dbs = [db, createDatabase(), createDatabase()];
    const ds = await Promise.all(dbs.map((x) => startDaemon(x.conninfo)));
    const list = ds.map((d) => d.endpoint);
    const c = new Client({ endpoints: list, timeoutMs: 20000 });
    const N = 1000;
    try {
        await Promise.all(Array.from({ length: N }, (_, i) =>
            c.storefront.upsertSection(`rt-${i}`, { page: "node", section: { type: "x" } })));
        // the CLI (libtenantq), 8 processes at a time
        let next = 0;
        const cli = async () => {
            while (next < N) {
                const i = next++;
                await new Promise((resolve, reject) => execFile(cliBin(), ["-e", list.join(","),
                    "call", `rt-${i}`, "section.upsert", '{"page":"c","section":{"type":"x"}}'],
                (e) => (e ? reject(e) : resolve())));
            }
        };
        await Promise.all(Array.from({ length: 8 }, cli));
        let agree = 0;
        for (const [k, x] of dbs.entries()) {
            const rows = psql(x.conninfo, "SELECT tenant, draft->'pages' ? 'node', " +
                "draft->'pages' ? 'c' FROM tenantq_storefront WHERE tenant LIKE 'rt-%'");
            for (const line of rows.split("\n").filter(Boolean)) {
                const [t, n, cc] = line.split("|");
                assert.equal(`${n}${cc}`, "tt", `${t} split between daemons (db ${k})`);
                assert.equal(endpointOrder(list, t)[0], k, `${t}: not its first choice`);
                agree++;
            }
        }
        assert.equal(agree, N);
    } finally {
        await c.close();
        await Promise.all(ds.map((d) => d.stop()));
        dbs.slice(1).forEach((x) => x.drop());
    }
});

test("the ported executor: the race gives one success and helpful messages", async () => {
    const d = await startDaemon(db.conninfo);
    const c = new Client({ endpoints: [d.endpoint] });
    const run = updatePageSection(c);
    try {
        const rs = await Promise.all(Array.from({ length: 10 }, () =>
            run("exec", { pageName: "home", section: { type: "hero", id: "home-hero-main" } })));
        assert.equal(rs.filter((r) => r.success).length, 1);
        const dup = rs.find((r) => !r.success);
        assert.equal(dup.code, "DUPLICATE_SECTION_ID");
        assert.match(dup.error, /already in use/);
        const bad = await run("exec", { pageName: "Bad Page", section: { type: "hero" } });
        assert.equal(bad.code, "INVALID_ARGUMENT");
        assert.match(userMessage(new TenantqError("LOCK_TIMEOUT", "held", true)),
            /still being saved.*Nothing was changed/);
    } finally {
        await c.close();
        await d.stop();
    }
});

test("LOCK_TIMEOUT from a direct writer: the helpful message, then retries get through", async () => {
    const d = await startDaemon(db.conninfo, ["--lock-timeout-ms", "200"]);
    const once = new Client({ endpoints: [d.endpoint] });
    const retrying = new Client({ endpoints: [d.endpoint], attempts: 10 });
    // a direct writer (the seed's pattern) holds the tenant's advisory lock
    const holder = spawn("psql", ["-X", "-q", "-d", db.conninfo], { stdio: ["pipe", "ignore", "ignore"] });
    holder.stdin.write("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('tenantq:' || " +
        "'exec-lock', 0)); SELECT pg_sleep(1.5); COMMIT;\n");
    holder.stdin.end();
    const exited = new Promise((r) => holder.on("exit", r));
    try {
        for (let i = 0; psql(db.conninfo, "SELECT count(*) FROM pg_locks WHERE " +
            "locktype = 'advisory' AND granted") === "0"; i++) {
            assert.ok(i < 200, "the holder never took the lock");
            await sleep(25);
        }
        const args = { pageName: "home", section: { type: "hero" } };
        const r = await updatePageSection(once)("exec-lock", args);
        assert.equal(r.code, "LOCK_TIMEOUT");
        assert.match(r.error, /still being saved.*Nothing was changed/);
        const t0 = Date.now();
        const ok = await updatePageSection(retrying)("exec-lock", args);
        assert.equal(ok.success, true, JSON.stringify(ok));
        assert.equal(ok.version, 1);
        assert.ok(Date.now() - t0 > 300, "succeeded while the lock was held");
    } finally {
        await exited;
        await Promise.all([once.close(), retrying.close()]);
        await d.stop();
    }
});

test("SQL operations through the generic call: a double booking is REJECTED", async () => {
    const root = new URL("../../../systemd/ops/booking/", import.meta.url).pathname;
    psql(db.conninfo, readFileSync(`${root}schema.sql`, "utf8"));
    const d = await startDaemon(db.conninfo, ["--ops-dir", `${root}ops`]);
    const c = new Client({ endpoints: [d.endpoint], attempts: 1 });
    try {
        const slot = "2026-03-01T10:00:00Z";
        const rs = await Promise.allSettled(Array.from({ length: 20 }, (_, i) =>
            c.call("node-salon", "booking.create", { slot, customer: `c${i}` })));
        const codes = rs.map((r) => (r.status === "fulfilled" ? "ok" : r.reason.code));
        assert.equal(codes.filter((x) => x === "ok").length, 1, codes.join());
        assert.equal(codes.filter((x) => x === "REJECTED").length, 19, codes.join());
        const rej = rs.find((r) => r.status === "rejected").reason;
        assert.ok(rej instanceof TenantqError);
        assert.equal(rej.retryable, false);
        const won = rs.find((r) => r.status === "fulfilled").value;
        assert.equal(won.count, 1);
        assert.equal(won.rows[0].customer.startsWith("c"), true);
        assert.equal(typeof won.rows[0].id, "number");
        const list = await c.call("node-salon", "booking.list", {
            from: "2026-03-01T00:00:00Z", until: "2026-03-02T00:00:00Z" });
        assert.equal(list.count, 1);
        assert.equal(psql(db.conninfo,
            "SELECT count(*) FROM booking WHERE tenant_id = 'node-salon'"), "1");
        await assert.rejects(c.call("node-salon", "booking.create", { slot }),
            (e) => e.code === "INVALID_ARGUMENT");
    } finally {
        await c.close();
        await d.stop();
    }
});

test("auth_token_file: the auth option is required, checked and then accepted", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tq-node-auth-"));
    const token = `node-${process.pid}-${Date.now()}`;
    const path = join(dir, "token");
    writeFileSync(path, `${token}\n`);
    chmodSync(path, 0o600);
    const d = new Daemon(db.conninfo, ["--auth-token-file", path]);
    d.auth = token;
    const none = new Client({ endpoints: [d.endpoint], attempts: 3 });
    const wrong = new Client({ endpoints: [d.endpoint], attempts: 3, auth: token.slice(0, -1) });
    const right = new Client({ endpoints: [d.endpoint], auth: token });
    try {
        await d.ready();
        for (const c of [none, wrong]) {
            const e = await c.storefront.upsertSection("auth-t", hero("home-hero-main"))
                .then(() => null, (x) => x);
            assert.ok(e instanceof TenantqError, String(e));
            assert.equal(e.code, "UNAUTHENTICATED");
            assert.equal(e.retryable, false);
            assert.ok(!e.message.includes(token), e.message);
        }
        assert.deepEqual(sections(db.conninfo, "auth-t", "home"), []);
        const r = await right.storefront.upsertSection("auth-t", hero("home-hero-main"));
        assert.equal(r.version, 1);
        assert.equal(sections(db.conninfo, "auth-t", "home").length, 1);
        assert.ok(!d.log().includes(token), "the token is in the daemon's log");
    } finally {
        await Promise.all([none.close(), wrong.close(), right.close()]);
        await d.stop();
        rmSync(dir, { recursive: true, force: true });
    }
});
