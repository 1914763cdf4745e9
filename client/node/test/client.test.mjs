// Client behaviour without a daemon: argument checks, keys, backoff, the
// bound on calls in flight, and fake SP servers that misbehave (garbage,
// an 8 GiB frame, a wrong handshake, silence), answer out of order, or drop
// the connection mid-call.  Each fake is a real unix-socket server.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { decode, encode } from "@msgpack/msgpack";

import { Client, TenantqError, backoffMs, decodeReply, encodeRequest, failoverWaitMs, makeKey }
    from "../dist/esm/index.js";

const REP = Buffer.from("0053500000310000", "hex");

/** A fake REP server on a unix socket; onConn(sock, frames) gets each
 * connection and a callback registration for its request frames. */
async function fake(onConn, handshake = true) {
    const path = join(mkdtempSync(join(tmpdir(), "tq-fake-")), "s.sock");
    const conns = new Set();
    const srv = createServer((s) => {
        conns.add(s);
        s.on("close", () => conns.delete(s));
        s.on("error", () => {});
        let buf = Buffer.alloc(0);
        let hs = false;
        const handlers = [];
        s.on("data", (d) => {
            buf = Buffer.concat([buf, d]);
            if (!hs && buf.length >= 8) {
                hs = true;
                buf = buf.subarray(8);
            }
            while (hs && buf.length >= 9) {
                assert.equal(buf[0], 1, "client wrote an ipc type byte other than 0x01");
                const n = Number(buf.readBigUInt64BE(1));
                if (buf.length < 9 + n)
                    break;
                const p = buf.subarray(9, 9 + n);
                buf = buf.subarray(9 + n);
                for (const h of handlers)
                    h(p.readUInt32BE(0), decode(p.subarray(4)));
            }
        });
        if (handshake)
            s.write(REP);
        onConn(s, (h) => handlers.push(h));
    });
    await new Promise((r) => srv.listen(path, r));
    return { endpoint: `ipc://${path}`, conns,
        close: () => new Promise((r) => { for (const s of conns) s.destroy(); srv.close(r); }) };
}

function reply(s, id, m) {
    const body = Buffer.from(encode(m));
    const f = Buffer.alloc(13 + body.length);
    f[0] = 1;
    f.writeBigUInt64BE(BigInt(4 + body.length), 1);
    f.writeUInt32BE(id, 9);
    body.copy(f, 13);
    s.write(f);
}

const ok = (result) => ({ v: 1, ok: true, result });

test("arguments the daemon would refuse are refused before sending", async () => {
    const c = new Client({ endpoints: ["ipc:///nonexistent/x.sock"], timeoutMs: 200 });
    const bad = async (args, re) => assert.rejects(c.call("t", "section.upsert", args),
        (e) => e instanceof TenantqError && e.code === "INVALID_ARGUMENT" && !e.retryable &&
            re.test(e.message));
    await bad({ page: "p", section: { type: "x", when: new Date() } }, /args\.section\.when: a Date/);
    await bad({ b: Buffer.from("ab") }, /args\.b: binary data/);
    await bad({ s: "a\ud800b" }, /args\.s: a lone UTF-16 surrogate/);
    await bad({ n: NaN }, /args\.n: NaN/);
    await bad({ n: 1n << 63n }, /64-bit/);
    await bad({ m: new Map() }, /a Map/);
    await bad({ z: "a\u0000" }, /U\+0000/);
    let deep = {};
    for (let i = 0; i < 31; i++)
        deep = { d: deep };
    await bad(deep, /nested deeper than 32/);
    const usage = (p) => assert.rejects(p, (e) => e instanceof TenantqError && e.code === "USAGE");
    await usage(c.call("", "ping"));
    await usage(c.call("t\n", "ping"));
    await usage(c.call("t", "ping", undefined, { key: "" }));
    await usage(c.call("t", "ping", undefined, { deadlineMs: 0 }));
    await usage(c.call("t", "ping", []));
    assert.throws(() => new Client({ endpoints: ["http://x"] }), /invalid endpoint/);
    assert.throws(() => new Client({ endpoints: [] }), TenantqError);
    await c.close();
});

test("64-bit integers round-trip exactly; keys, backoff, failover wait as libtenantq", () => {
    const big = (1n << 62n) + 1n;
    const body = encodeRequest({ tenant: "t", op: "x", args: { a: big, b: -big, c: 2 ** 40 } });
    const m = decode(body, { useBigInt64: true });
    assert.equal(m.args.a, big);
    assert.equal(m.args.b, -big);
    assert.equal(m.args.c, BigInt(2 ** 40)); // an integer (uint64), not a float
    const r = decodeReply(encode({ v: 1, ok: true, result: { a: big, small: 5n, n: 2 ** 40 } },
        { useBigInt64: true }));
    assert.deepEqual(r.result, { a: big, small: 5, n: 2 ** 40 });
    const k = makeKey(0x18c5a3b2f00);
    assert.match(k, /^auto-018c5a3b2f00[0-9a-f]{20}$/);
    assert.notEqual(makeKey(), makeKey());
    assert.ok(makeKey(1) < makeKey(2));
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 20].map(backoffMs), [50, 100, 200, 400, 800, 1600, 1600, 1600]);
    assert.equal(failoverWaitMs(15000), 250);
    assert.equal(failoverWaitMs(300), 150);
    assert.equal(failoverWaitMs(1), 1);
});

test("keys for state-changing ops only, the same key on every retry, backoff between", async () => {
    const seen = [];
    let fails = 2;
    const f = await fake((s, on) => on((id, m) => {
        seen.push({ at: Date.now(), m });
        if (m.op === "section.upsert" && fails-- > 0)
            return reply(s, id, { v: 1, ok: false, error: { code: "QUEUE_FULL", message: "full", retryable: true } });
        reply(s, id, ok({ echo: m.key ?? null }));
    }));
    const c = new Client({ endpoints: [f.endpoint], attempts: 3, auth: "s3cret" });
    await c.call("t", "ping");
    await c.call("t", "draft.get");
    const r = await c.call("t", "section.upsert", { page: "p", section: { type: "x" } });
    await c.call("t", "section.remove", { id: "x" }, { key: "mine", deadlineMs: 1234 });
    assert.equal(seen[0].m.key, undefined);
    assert.equal(seen[1].m.key, undefined);
    const ups = seen.filter((x) => x.m.op === "section.upsert");
    assert.equal(ups.length, 3);
    assert.match(ups[0].m.key, /^auto-[0-9a-f]{32}$/);
    assert.ok(ups.every((x) => x.m.key === ups[0].m.key));
    assert.equal(r.echo, ups[0].m.key);
    assert.ok(ups[1].at - ups[0].at >= 45 && ups[2].at - ups[1].at >= 95);
    const rm = seen.at(-1).m;
    assert.equal(rm.key, "mine");
    assert.equal(rm.deadline_ms, 1234);
    assert.ok(seen.every((x) => x.m.auth === "s3cret" && x.m.v === 1));
    await c.close();
    await f.close();
});

test("many calls in flight on one connection, replies in any order, bounded", async () => {
    const held = [];
    let peak = 0;
    const f = await fake((s, on) => on((id, m) => {
        held.push(() => reply(s, id, ok({ n: m.args.n })));
        peak = Math.max(peak, held.length);
        if (held.length === 8) // answer in reverse order
            for (const r of held.splice(0).reverse())
                r();
    }));
    const c = new Client({ endpoints: [f.endpoint], maxInFlight: 8, maxPerConnection: 8 });
    const ns = Array.from({ length: 64 }, (_, n) => n);
    const got = await Promise.all(ns.map((n) => c.call("t", "ping", { n })));
    assert.deepEqual(got.map((r) => r.n), ns);
    assert.equal(peak, 8); // never more than maxInFlight at the server
    assert.equal(f.conns.size, 1);
    await c.close();
    await f.close();
});

test("a call whose connection broke is sent again (once connected), others are not", async () => {
    const seen = [];
    let conn = 0;
    const f = await fake((s, on) => {
        const mine = ++conn;
        on((id, m) => {
            seen.push({ conn: mine, key: m.key });
            if (mine === 1)
                s.destroy(); // the daemon died with the request
            else
                reply(s, id, ok({ conn: mine }));
        });
    });
    const c = new Client({ endpoints: [f.endpoint], timeoutMs: 5000 });
    const r = await c.call("t", "section.remove", { id: "x" });
    assert.equal(r.conn, 2);
    assert.equal(seen.length, 2);
    assert.equal(seen[0].key, seen[1].key);
    await c.close();
    await f.close();
});

async function misbehaving(onConn, expectMs = 1500) {
    const f = await fake(onConn, false);
    const c = new Client({ endpoints: [f.endpoint], timeoutMs: 600 });
    const t0 = Date.now();
    const before = process.memoryUsage().rss;
    const e = await c.call("t", "ping").then(() => null, (x) => x);
    const took = Date.now() - t0;
    assert.ok(e instanceof TenantqError, String(e));
    assert.ok(["TIMEOUT", "TRANSPORT"].includes(e.code) && e.retryable, e.code);
    assert.ok(took < expectMs, `took ${took} ms`);
    assert.ok(process.memoryUsage().rss - before < 64 << 20, "memory grew");
    await c.close();
    await f.close();
    return e;
}

test("fake server: garbage bytes instead of a handshake", async () => {
    const e = await misbehaving((s) => s.write(Buffer.from("HTTP/1.1 400 Bad Request\r\n\r\n")));
    assert.match(e.message, /wrong SP handshake/);
});

test("fake server: a REQ handshake (wrong protocol id)", async () => {
    const e = await misbehaving((s) => s.write(Buffer.from("0053500000300000", "hex")));
    assert.match(e.message, /wrong SP handshake/);
});

test("fake server: a frame announcing 8 GiB", async () => {
    const e = await misbehaving((s, on) => {
        s.write(REP);
        on(() => {
            const h = Buffer.alloc(13);
            h[0] = 1;
            h.writeBigUInt64BE(8n << 30n, 1);
            s.write(h);
        });
    });
    assert.match(e.message, /exceeds the receive limit/);
});

test("fake server: garbage after the handshake (ipc type byte)", async () => {
    const e = await misbehaving((s, on) => {
        s.write(REP);
        on(() => s.write(Buffer.from("garbage garbage garbage")));
    });
    assert.match(e.message, /type byte/);
});

test("fake server: a reply that is not a valid response is PROTOCOL", async () => {
    const f = await fake((s, on) => on((id) => reply(s, id, { v: 1, ok: "yes" })));
    const c = new Client({ endpoints: [f.endpoint], timeoutMs: 1000 });
    await assert.rejects(c.call("t", "ping"), (e) => e.code === "PROTOCOL" && !e.retryable);
    await c.close();
    await f.close();
});

test("fake server: silence (no handshake, then no reply) times out on time", async () => {
    await misbehaving(() => {});
    await misbehaving((s) => s.write(REP));
});

test("close() rejects calls in flight and waiting, and leaves no handles", () => {
    const script = `
        import { Client } from ${JSON.stringify(new URL("../dist/esm/index.js", import.meta.url).href)};
        import { createServer } from "node:net";
        const path = ${JSON.stringify(join(mkdtempSync(join(tmpdir(), "tq-close-")), "s.sock"))};
        const srv = createServer((s) => s.write(Buffer.from("0053500000310000", "hex")));
        srv.listen(path, async () => {
            const c = new Client({ endpoints: ["ipc://" + path], maxInFlight: 2 });
            const calls = [1, 2, 3].map(() => c.call("t", "ping").then(() => "ok", (e) => e.code));
            setTimeout(async () => {
                await c.close();
                srv.close();
                console.log(JSON.stringify(await Promise.all(calls)));
            }, 200);
        });`;
    const t0 = Date.now();
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script],
        { encoding: "utf8", timeout: 10000 });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), ["TRANSPORT", "TRANSPORT", "TRANSPORT"]);
    assert.ok(Date.now() - t0 < 5000, "the process did not exit at once");
});

test("CommonJS require works", () => {
    const r = spawnSync(process.execPath, ["-e",
        `const t = require(${JSON.stringify(new URL("..", import.meta.url).pathname)});` +
        "console.log(typeof t.Client, typeof t.TenantqError)"], { encoding: "utf8" });
    assert.equal(r.stdout.trim(), "function function", r.stderr);
});
