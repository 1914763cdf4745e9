// load.mjs - a small load driver for the Node client, shaped like
// tests/load/tenantq-load's W1 (one hot tenant, upsert=100: replace a random
// one of the 5 seeded sections of a random one of 4 pages) and W4 (ping,
// 10,000 tenants), with a fixed number of calls in flight on one Client.
//
// Usage: node bench/load.mjs --endpoint EP --workload w1|w4 [--inflight 64]
//        [--seconds 10] [--json FILE]
// Prints one line: requests/s, p50, p99, errors.  W1 expects the tenant
// load-t000000 seeded by a tenantq-load run on the same database (its
// section ids page0-s0 ..); W1 works without it too (the first upserts
// append).
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { Client } from "../dist/esm/index.js";

const { values: o } = parseArgs({ options: {
    endpoint: { type: "string" }, workload: { type: "string", default: "w1" },
    inflight: { type: "string", default: "64" }, seconds: { type: "string", default: "10" },
    json: { type: "string" } } });
if (!o.endpoint)
    throw new Error("--endpoint is required");
const inflight = Number(o.inflight);
const client = new Client({ endpoints: [o.endpoint], maxInFlight: inflight,
    maxPerConnection: Number(process.env.TQ_PER_CONN ?? 16) });
const section = (rev) => ({ type: "text", headline: "Spring collection: light layers for long evenings",
    body: "Linen shirts, cotton knits and easy trousers in warm neutrals. Free returns within " +
        "thirty days, delivery in two to four working days.",
    style: { align: "left", theme: "light", columns: 2 }, rev });
const rnd = (n) => Math.floor(Math.random() * n);
const one = o.workload === "w1"
    ? (i) => client.storefront.upsertSection("load-t000000",
        { page: `page${rnd(4)}`, index: rnd(5), section: section(`node-${i}`) })
    : () => client.call(`load-t${String(rnd(10000)).padStart(6, "0")}`, "ping");

const lat = [];
let errors = 0, seq = 0, version = 0;
const end = Date.now() + Number(o.seconds) * 1000;
const t0 = process.hrtime.bigint();
await Promise.all(Array.from({ length: inflight }, async () => {
    while (Date.now() < end) {
        const s = process.hrtime.bigint();
        try {
            const r = await one(seq++);
            if (r.version > version)
                version = r.version;
            lat.push(Number(process.hrtime.bigint() - s) / 1e6);
        } catch {
            errors++;
        }
    }
}));
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
await client.close();
lat.sort((a, b) => a - b);
const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? 0;
const r = { workload: o.workload, inflight, requests: lat.length, errors, version,
    throughput: lat.length / secs, p50_ms: q(0.5), p99_ms: q(0.99) };
console.log(`node ${r.workload}: ${r.throughput.toFixed(0)} req/s, p50 ${r.p50_ms.toFixed(2)} ms, ` +
    `p99 ${r.p99_ms.toFixed(2)} ms, ${r.requests} ok, ${errors} errors` +
    (version ? `, tenant version now ${version}` : ""));
if (o.json)
    writeFileSync(o.json, JSON.stringify(r) + "\n");
