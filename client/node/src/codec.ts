// codec.ts - request encoding and reply decoding (wire protocol sections 2-4
// and 7), with the checks that make a value the daemon would refuse fail
// here, before anything is sent.  Pure: no I/O.

import { randomBytes } from "node:crypto";
import { Decoder } from "@msgpack/msgpack";

import { TenantqError, WIRE_CODES, usage } from "./errors.js";
import { LONE_SURROGATE, Packer } from "./pack.js";

/** A JSON value as it travels in args and results.  Integers beyond 2^53 are
 * bigint (both ways); every other integer is a number. */
export type JsonValue = null | boolean | number | bigint | string | JsonValue[] |
    { [key: string]: JsonValue | undefined };
export type JsonObject = { [key: string]: JsonValue | undefined };

const packer = new Packer();
const decoder = new Decoder({ useBigInt64: true });

/** Ops that change state get an idempotency key when the caller gave none
 * (every op but ping and draft.get, as libtenantq). */
export function opChangesState(op: string): boolean {
    return op !== "ping" && op !== "draft.get";
}

/** "auto-", 12 hex digits of the wall clock in milliseconds, 20 random hex
 * digits (80 bits): libtenantq's format.  Increasing over time, so a
 * tenant's idempotency records go to the end of the daemon's index. */
export function makeKey(nowMs: number = Date.now()): string {
    return "auto-" + nowMs.toString(16).padStart(12, "0").slice(-12) +
        randomBytes(10).toString("hex");
}

// U+0000..U+001F, U+007F..U+009F
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** Check an envelope string (tenant, op, key): 1..max UTF-8 bytes, no
 * control characters, no lone surrogates. */
export function checkName(what: string, v: unknown, max: number): string {
    if (typeof v !== "string")
        throw usage(`${what} must be a string, got ${v === null ? "null" : typeof v}`);
    const n = Buffer.byteLength(v, "utf8");
    if (n < 1 || n > max)
        throw usage(`${what} must be 1..${max} bytes of UTF-8, got ${n}`);
    if (CONTROL.test(v))
        throw usage(`${what} contains a control character`);
    if (LONE_SURROGATE.test(v))
        throw usage(`${what} contains a lone UTF-16 surrogate (not valid UTF-8)`);
    return v;
}

export interface RequestFields {
    tenant: string;
    op: string;
    args?: JsonObject;
    key?: string;
    deadlineMs?: number;
    auth?: string;
}

/** The msgpack body of a request, keys in the recommended order.  Throws
 * INVALID_ARGUMENT (naming the path, "args.section.when") for args the
 * daemon would refuse: Date, binary data, Map and class instances, NaN and
 * infinities, integers outside int64, lone surrogates, U+0000, nesting
 * deeper than the request allows. */
export function encodeRequest(f: RequestFields): Uint8Array {
    const p = packer;
    try {
        p.mapHead(3 + Number(f.args !== undefined) + Number(f.key !== undefined) +
            Number(f.deadlineMs !== undefined) + Number(f.auth !== undefined));
        p.str("v", "v");
        p.value(1, "v", 1);
        p.str("tenant", "tenant");
        p.str(f.tenant, "tenant");
        p.str("op", "op");
        p.str(f.op, "op");
        if (f.args !== undefined) {
            p.str("args", "args");
            p.value(f.args, "args", 2);
        }
        if (f.key !== undefined) {
            p.str("key", "key");
            p.str(f.key, "key");
        }
        if (f.deadlineMs !== undefined) {
            p.str("deadline_ms", "deadline_ms");
            p.value(f.deadlineMs, "deadline_ms", 1);
        }
        if (f.auth !== undefined) {
            p.str("auth", "auth");
            p.str(f.auth, "auth");
        }
    } catch (e) {
        p.take(); // drop the partial value
        throw e;
    }
    return p.take();
}

export interface Reply {
    result: JsonValue;
    replayed: boolean;
    timing?: { queue_us: number; exec_us: number; batch: number };
}

/** bigint values that fit a double exactly become numbers. */
function narrow(v: unknown): unknown {
    if (typeof v === "bigint")
        return v >= -9007199254740991n && v <= 9007199254740991n ? Number(v) : v;
    if (v === null || typeof v !== "object")
        return v;
    if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++)
            v[i] = narrow(v[i]);
        return v;
    }
    if (ArrayBuffer.isView(v))
        throw new Error("binary data in a reply");
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o))
        o[k] = narrow(o[k]);
    return o;
}

function protocol(msg: string): TenantqError {
    return new TenantqError("PROTOCOL", `invalid reply: ${msg}`, false);
}

/** Decode and check a reply body (wire protocol section 3).  Returns the
 * result, or throws the daemon's error as a TenantqError (its own retryable
 * flag; an unknown code is PROTOCOL, keeping the message), or PROTOCOL for a
 * malformed reply. */
export function decodeReply(body: Uint8Array): Reply {
    let m: unknown;
    try {
        m = narrow(decoder.decode(body));
    } catch (e) {
        throw protocol(`${(e as Error).message}`);
    }
    if (m === null || typeof m !== "object" || Array.isArray(m))
        throw protocol("not a map");
    const r = m as Record<string, unknown>;
    if (r.v !== 1)
        throw protocol("v is not 1");
    if (typeof r.ok !== "boolean")
        throw protocol("ok is not a boolean");
    if (r.replayed !== undefined && typeof r.replayed !== "boolean")
        throw protocol("replayed is not a boolean");
    if (r.ok) {
        if (!("result" in r) || (r.error !== undefined && r.error !== null))
            throw protocol("ok without result, or with an error");
        return { result: r.result as JsonValue, replayed: r.replayed === true,
            timing: r.timing as Reply["timing"] };
    }
    const e = r.error as Record<string, unknown> | null | undefined;
    if (e === null || typeof e !== "object" || (r.result !== undefined && r.result !== null))
        throw protocol("not ok without an error map, or with a result");
    if (typeof e.code !== "string" || e.code === "" || typeof e.message !== "string" ||
        typeof e.retryable !== "boolean")
        throw protocol("error lacks code, message or retryable");
    if (!WIRE_CODES.has(e.code))
        throw new TenantqError("PROTOCOL", `unknown error code ${e.code}: ${e.message}`, false);
    throw new TenantqError(e.code as TenantqError["code"], e.message, e.retryable);
}

