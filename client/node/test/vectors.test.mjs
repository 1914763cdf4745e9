// The shared wire vectors (proto/wire-vectors.json), also checked by the C
// unit test tests/unit/test_vectors.c: this client's encoder, framing,
// reply decoder and routing must give exactly the stored bytes and outcomes.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { TenantqError, decodeReply, encodeRequest, endpointOrder, frame, rendezvousScore,
    HANDSHAKE_REQ } from "../dist/esm/index.js";

const V = JSON.parse(readFileSync(new URL("../../../proto/wire-vectors.json", import.meta.url)));
const hex = (b) => Buffer.from(b).toString("hex");

test("vectors: handshake bytes", () => {
    assert.equal(hex(HANDSHAKE_REQ), V.handshake.req);
    assert.equal(V.handshake.rep, "0053500000310000");
});

test("vectors: every frame", () => {
    assert.ok(V.frames.length >= 10);
    for (const f of V.frames) {
        const body = Buffer.from(f.body, "hex");
        assert.equal(hex(frame(f.transport === "ipc", f.id, body)), f.frame, f.name);
        if (f.kind === "request") {
            const r = f.request;
            assert.equal(hex(encodeRequest({ tenant: r.tenant, op: r.op, args: r.args, key: r.key,
                deadlineMs: r.deadline_ms })), f.body, f.name);
        } else if (f.kind === "reply") {
            const r = decodeReply(body);
            assert.deepEqual(r.result, f.reply.result, f.name);
            assert.equal(r.replayed, f.reply.replayed, f.name);
        } else {
            assert.throws(() => decodeReply(body), (e) => e instanceof TenantqError &&
                e.code === f.error.code && e.retryable === f.error.retryable &&
                e.message === f.error.message, f.name);
        }
    }
});

test("vectors: routing scores and orders, and 1,000 tenants' first choice", () => {
    for (const r of V.routing) {
        assert.deepEqual(r.endpoints.map((e) => rendezvousScore(e, r.tenant).toString(16)
            .padStart(16, "0")), r.scores);
        assert.deepEqual(endpointOrder(r.endpoints, r.tenant), r.order);
    }
    const b = V.routing_bulk;
    let got = "";
    for (let i = 0; i < b.count; i++)
        got += endpointOrder(b.endpoints, `tenant-${i}`)[0];
    assert.equal(got, b.first_choice);
    // every endpoint gets a fair share
    for (const k of ["0", "1", "2"])
        assert.ok(got.split(k).length - 1 > 250, `endpoint ${k}`);
});
