// gen-vectors.mjs - write proto/wire-vectors.json, the framed test vectors
// both clients check (tests/unit/test_vectors.c and test/vectors.test.mjs).
// Run once when a vector is added; the checks, not this script, are the
// contract: the C test encodes the same values with the reference codec and
// must get the same bytes.
import { writeFileSync } from "node:fs";
import { encode } from "@msgpack/msgpack";
import { encodeRequest, endpointOrder, frame, rendezvousScore, HANDSHAKE_REQ } from "../dist/esm/index.js";

const hex = (b) => Buffer.from(b).toString("hex");
const frames = [];
const add = (name, kind, id, fields, body) => {
    for (const transport of ["tcp", "ipc"])
        frames.push({ name: `${name} (${transport})`, kind, transport, id, ...fields,
            body: hex(body), frame: hex(frame(transport === "ipc", id, body)) });
};

const reqs = [
    ["upsert with key and deadline (the worked example)", 0x80000001,
        { tenant: "acme", op: "section.upsert",
          args: { page: "home", section: { type: "hero", headline: "Hi" } }, key: "r1",
          deadline_ms: 5000 }],
    ["ping without args", 0x80000002, { tenant: "t", op: "ping" }],
    ["draft.get with a 40-byte tenant (str8 is not used below 32 bytes)", 0xfffffffe,
        { tenant: "tenant-with-a-rather-long-name-0123456789", op: "draft.get" }],
    ["move with an auto key, unicode and a float", 0x80abcdef,
        { tenant: "café", op: "section.move", args: { id: "home-hero-main", page: "über", index: 3,
          weight: 0.5, big: 4294967296, neg: -129 }, key: "auto-018c5a3b2f00aabbccddeeff0011223344" }],
];
for (const [name, id, f] of reqs)
    add(name, "request", id, { request: f }, encodeRequest({ tenant: f.tenant, op: f.op,
        args: f.args, key: f.key, deadlineMs: f.deadline_ms }));

const replies = [
    ["upsert success with timing (the worked example)", 0x80000001,
        { v: 1, ok: true, result: { id: "home-hero-main", page: "home", index: 0, created: true,
          version: 1 }, timing: { queue_us: 120, exec_us: 2350, batch: 1 } }],
    ["replayed success", 0x80000003,
        { v: 1, ok: true, result: { version: 7 }, replayed: true }],
    ["null result", 0x80000004, { v: 1, ok: true, result: null }],
];
for (const [name, id, m] of replies)
    add(name, "reply", id, { reply: { ok: true, result: m.result, replayed: m.replayed === true,
        timing: m.timing ?? null } }, encode(m));
const errors = [
    ["QUEUE_FULL error (the worked example)", 0x80000005, "QUEUE_FULL",
        "tenant acme: lane full (1024 queued)", true, false],
    ["DUPLICATE_SECTION_ID error", 0x80000006, "DUPLICATE_SECTION_ID",
        "section id home-hero-main is already used on page home at index 0", false, false],
    ["replayed OUTCOME_UNKNOWN error", 0x80000007, "OUTCOME_UNKNOWN",
        "connection lost during COMMIT", true, true],
];
for (const [name, id, code, message, retryable, replayed] of errors) {
    const m = { v: 1, ok: false, error: { code, message, retryable } };
    if (replayed)
        m.replayed = true;
    add(name, "error", id, { error: { code, message, retryable, replayed } }, encode(m));
}

const eps3 = ["ipc:///run/tenantq/a.sock", "tcp://10.0.0.2:5555", "tcp://10.0.0.3:5555"];
const routing = [];
for (const [endpoints, tenant] of [[eps3, "acme"], [eps3, "café"], [eps3, ""],
    [["tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"], "tenant-42"]])
    routing.push({ endpoints, tenant, scores: endpoints.map((e) => rendezvousScore(e, tenant)
        .toString(16).padStart(16, "0")), order: endpointOrder(endpoints, tenant) });
// 1,000 tenants over 3 endpoints: the index of each one's first choice
let best = "";
for (let i = 0; i < 1000; i++)
    best += endpointOrder(eps3, `tenant-${i}`)[0];

const out = {
    about: "tenantq wire protocol v1 test vectors: whole SP frames (hex) of requests and " +
        "replies, handshakes, and rendezvous routing; checked by tests/unit/test_vectors.c " +
        "and client/node/test/vectors.test.mjs. See proto/PROTOCOL.md.",
    handshake: { req: hex(HANDSHAKE_REQ), rep: "0053500000310000" },
    frames,
    routing,
    routing_bulk: { endpoints: eps3, tenant_format: "tenant-%d", count: 1000, first_choice: best },
};
writeFileSync(new URL("../../../proto/wire-vectors.json", import.meta.url),
    JSON.stringify(out, null, 1) + "\n");
