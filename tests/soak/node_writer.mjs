// node_writer.mjs ENDPOINTS TENANTS PREFIX SECONDS SEED - the Node client
// (client/node, built into its dist/) as a keyed writer of tests/soak/soak.py.
//
// ENDPOINTS and TENANTS are comma-separated.  Each tenant's draft belongs to
// this writer alone: it keeps its own model of it and edits it one request
// at a time, the tenants in turn, for SECONDS seconds, then finishes the
// request in hand.  Ops: append a section (section.upsert, id PREFIX-<n>),
// replace one (section.upsert with index), section.remove, section.move,
// draft.publish, and draft.get (a read).  Every state change carries a key
// PREFIX-k<n>; a retryable error, TIMEOUT or TRANSPORT (outcome unknown) is
// retried after 100 ms with the same key until ok (at most 120 s, then exit
// 3); any other error ends the run with exit 2.
//
// stdout, one JSON line each: {"try": {"key", "code"}} per failed try,
// {"ack": {"tenant", "op", "args", "key", "version", "replayed"}} per
// acknowledged change (soak.py replays them on its model), {"read":
// {"tenant", "version", "draft"}} per draft.get, and {"done": {"requests"}}.

import { Client, TenantqError } from "../../client/node/dist/esm/index.js";

const [endpoints, tenantList, prefix, seconds, seedArg] = process.argv.slice(2);
const tenants = tenantList.split(",");
const until = Date.now() + Number(seconds) * 1000;
const tq = new Client({ endpoints: endpoints.split(","), timeoutMs: 4000, attempts: 1 });
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
// Writes to a pipe are queued once its buffer is full, and process.exit()
// drops what is queued: exit only once stdout has drained (awaitable, so no
// later line is written after the decision to stop).
const exit = (code) => new Promise(() => process.stdout.write("", () => process.exit(code)));

// a small seeded PRNG (mulberry32), so a run's op sequence is repeatable
let seed = Number(seedArg) >>> 0;
function rnd() {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];
const PAGES = ["home", "about"];
const model = Object.fromEntries(tenants.map((t) => [t, { home: [], about: [] }]));
let requests = 0;
let n = 0;

async function send(tenant, op, args, key) {
    const give_up = Date.now() + 120000;
    for (;;) {
        requests++;
        try {
            return await tq.callFull(tenant, op, args, key ? { key } : {});
        } catch (e) {
            if (!(e instanceof TenantqError))
                throw e;
            out({ try: { key: key || null, code: e.code } });
            if (!e.retryable && e.code !== "TIMEOUT" && e.code !== "TRANSPORT") {
                out({ fatal: { tenant, op, args, key, code: e.code, message: e.message } });
                await exit(2);
            }
            if (Date.now() > give_up) {
                out({ unresolved: { tenant, op, args, key } });
                await exit(3);
            }
            await new Promise((r) => setTimeout(r, 100));
        }
    }
}

function where(m, id) {
    for (const p of PAGES) {
        const i = m[p].findIndex((s) => s.id === id);
        if (i >= 0)
            return [p, i];
    }
    return null;
}

try {
    for (let turn = 0; Date.now() < until; turn++) {
        const tenant = tenants[turn % tenants.length];
        const m = model[tenant];
        const ids = PAGES.flatMap((p) => m[p].map((s) => s.id));
        const r = rnd();
        let op, args;
        if (ids.length < 4 || (r < 0.4 && ids.length < 24)) {
            const id = `${prefix}-${n++}`;
            op = "section.upsert";
            args = { page: pick(PAGES), section: { id, type: "item", n: 0 } };
        } else if (r < 0.55) {
            const [page, index] = where(m, pick(ids));
            op = "section.upsert";
            args = { page, index, section: { id: m[page][index].id, type: "item",
                                              n: m[page][index].n + 1 } };
        } else if (r < 0.7) {
            op = "section.remove";
            args = { id: pick(ids) };
        } else if (r < 0.85) {
            const id = pick(ids);
            const page = pick(PAGES);
            const len = m[page].filter((s) => s.id !== id).length;
            op = "section.move";
            args = { id, page, index: Math.floor(rnd() * (len + 1)) };
        } else if (r < 0.9) {
            op = "draft.publish";
            args = {};
        } else {
            const res = await send(tenant, "draft.get", {}, null);
            out({ read: { tenant, version: res.result.version, draft: res.result.draft } });
            continue;
        }
        const key = `${prefix}-k${n++}`;
        const res = await send(tenant, op, args, key);
        out({ ack: { tenant, op, args, key, version: res.result.version, replayed: !!res.replayed } });
        // the writer's own model, to choose the next ops
        if (op === "section.upsert") {
            if (args.index === undefined)
                m[args.page].push(args.section);
            else
                m[args.page][args.index] = args.section;
        } else if (op === "section.remove") {
            const [p, i] = where(m, args.id);
            m[p].splice(i, 1);
        } else if (op === "section.move") {
            const [p, i] = where(m, args.id);
            const [s] = m[p].splice(i, 1);
            m[args.page].splice(args.index, 0, s);
        }
        await new Promise((r) => setTimeout(r, 40));
    }
} finally {
    await tq.close();
}
out({ done: { requests } });
await exit(0);
