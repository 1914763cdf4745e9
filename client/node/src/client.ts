// client.ts - the Client: calls to tenantqd over one or several endpoints,
// with libtenantq's behaviour (see README.md "Behaviour"): automatic
// idempotency keys for state-changing ops, retries of retryable errors with
// the same bytes after 50, 100, 200 .. 1600 ms, a timeout per attempt, a
// bound on calls in flight (further calls wait for a free slot), rendezvous
// routing with failover after 250 ms without a connection (or half the
// timeout), a probe that brings an endpoint back, and a re-send of the same
// request only when the connection that carried it broke.
//
// Many calls share a connection (raw REQ: our own request ids, replies
// matched by id in any order), at most maxPerConnection at a time, because
// the daemon's raw REP socket drops a reply when that connection is still
// busy sending earlier ones; an endpoint gets more connections as needed.

import { Conn, ConnEvents, parseEndpoint, Address } from "./conn.js";
import { TenantqError, usage } from "./errors.js";
import { JsonObject, JsonValue, checkName, decodeReply, encodeRequest, makeKey,
    opChangesState } from "./codec.js";
import { endpointOrder } from "./route.js";
import { Storefront } from "./storefront.js";

export const DEFAULT_TIMEOUT_MS = 15000;
export const DEFAULT_MAX_INFLIGHT = 64;
export const DEFAULT_MAX_PER_CONNECTION = 16;
/** Receive limit: the daemon's 1 MiB drafts plus envelope fit easily. */
export const DEFAULT_RCVMAX = 8 * 1024 * 1024;
export const FAILOVER_MS = 250;
/** Pause before connecting again to an endpoint (nanomsg's reconnect interval). */
export const RECONNECT_MS = 100;
export const MAX_ENDPOINTS = 64;

export interface ClientOptions {
    /** One or several daemons of one deployment: ["ipc:///run/tenantq/tenantqd.sock"]. */
    endpoints: string[] | string;
    /** Per-attempt timeout, ms (default 15000). */
    timeoutMs?: number;
    /** Tries per call for retryable errors (default 1 = no retry, at most 100). */
    attempts?: number;
    /** Calls in flight at once on this client (default 64); more wait. */
    maxInFlight?: number;
    /** Calls in flight on one connection (default 16). */
    maxPerConnection?: number;
    /** Largest reply frame accepted, bytes including the 4-byte id (default 8 MiB). */
    receiveLimit?: number;
    /** Sent as the envelope key `auth` on every request when set. */
    auth?: string;
}

export interface CallOptions {
    /** Idempotency key (default: generated for every op but ping and draft.get). */
    key?: string;
    /** How long the daemon may hold the request, 1..86400000 ms. */
    deadlineMs?: number;
    /** Per-attempt timeout (default: the client's). */
    timeoutMs?: number;
    /** Tries (default: the client's). */
    attempts?: number;
}

export interface CallResult<T = JsonValue> {
    result: T;
    /** Answered from the daemon's idempotency record of an earlier execution. */
    replayed: boolean;
}

/** Pause before try attempt + 1 (libtenantq's backoff_ms). */
export function backoffMs(attempt: number): number {
    return 25 << (attempt < 6 ? attempt : 6);
}

/** How long a send waits for a connection before failing over. */
export function failoverWaitMs(timeoutMs: number): number {
    const half = Math.floor(timeoutMs / 2);
    return half < FAILOVER_MS ? Math.max(half, 1) : FAILOVER_MS;
}

type Outcome = { body: Uint8Array } | { broken: true } | { timeout: true };

interface Pending { conn: Conn; done(o: Outcome): void }

interface Waiter { wake(): void }

/** The last protocol violation of ep's peer, for a timeout's message. */
function why(ep: Endpoint): string {
    return ep.violation === null ? "" : `; the peer broke the protocol: ${ep.violation}`;
}

class Endpoint {
    conns: Conn[] = [];
    down = false;
    probe: Conn | null = null;
    waiters = new Set<Waiter>();
    connecting = 0;
    nextConnect = 0; // no new connection before this (ms), after a failure
    retryTimer: NodeJS.Timeout | null = null; // the probe's next try
    growTimer: NodeJS.Timeout | null = null;  // the next connection's
    violation: string | null = null; // the last protocol violation seen there
    constructor(readonly url: string, readonly addr: Address) {}
    connected(): boolean {
        return this.conns.some((c) => c.ready);
    }
}

export class Client {
    /** Typed helpers for the storefront ops. */
    readonly storefront: Storefront;
    private readonly eps: Endpoint[];
    private readonly urls: string[];
    private readonly timeoutMs: number;
    private readonly attempts: number;
    private readonly maxInFlight: number;
    private readonly perConn: number;
    private readonly rcvMax: number;
    private readonly auth?: string;
    private nextId = 0;
    private inflight = 0;
    private readonly slotQueue: Array<(ok: boolean) => void> = [];
    private readonly pending = new Map<number, Pending>();
    private readonly cancels = new Set<() => void>();
    private closed = false;
    private readonly events: ConnEvents;

    constructor(opts: ClientOptions) {
        if (opts === null || typeof opts !== "object")
            throw usage("new Client({endpoints: [...]}): options missing");
        const list = typeof opts.endpoints === "string"
            ? opts.endpoints.split(",").map((s) => s.trim()) : opts.endpoints;
        if (!Array.isArray(list) || list.length < 1 || list.length > MAX_ENDPOINTS)
            throw usage(`endpoints: 1..${MAX_ENDPOINTS} endpoint strings expected`);
        this.urls = list.slice();
        this.eps = list.map((u) => {
            const a = typeof u === "string" ? parseEndpoint(u) : null;
            if (a === null)
                throw usage(`invalid endpoint ${JSON.stringify(u)}: expected ipc://PATH or ` +
                    "tcp://HOST:PORT");
            return new Endpoint(u, a);
        });
        const num = (v: number | undefined, name: string, def: number, min: number,
            max: number): number => {
            if (v === undefined)
                return def;
            if (!Number.isInteger(v) || v < min || v > max)
                throw usage(`${name} must be an integer in ${min}..${max}, got ${v}`);
            return v;
        };
        this.timeoutMs = num(opts.timeoutMs, "timeoutMs", DEFAULT_TIMEOUT_MS, 1, 2 ** 31 - 1);
        this.attempts = num(opts.attempts, "attempts", 1, 1, 100);
        this.maxInFlight = num(opts.maxInFlight, "maxInFlight", DEFAULT_MAX_INFLIGHT, 1, 65536);
        this.perConn = num(opts.maxPerConnection, "maxPerConnection",
            DEFAULT_MAX_PER_CONNECTION, 1, 65536);
        this.rcvMax = num(opts.receiveLimit, "receiveLimit", DEFAULT_RCVMAX, 1024, 2 ** 31 - 1);
        if (opts.auth !== undefined)
            this.auth = checkName("auth", opts.auth, 4096);
        this.events = {
            ready: (c) => this.onReady(c),
            reply: (c, id, body) => this.onReply(c, id, body),
            closed: (c, v) => this.onClosed(c, v),
        };
        this.storefront = new Storefront(this);
    }

    /** Call op for tenant; resolves with the result object, rejects with a
     * TenantqError. */
    async call<T = JsonValue>(tenant: string, op: string, args?: JsonObject,
        opts?: CallOptions): Promise<T> {
        return (await this.callFull<T>(tenant, op, args, opts)).result;
    }

    /** As call, with whether the reply was replayed. */
    async callFull<T = JsonValue>(tenant: string, op: string, args?: JsonObject,
        opts: CallOptions = {}): Promise<CallResult<T>> {
        if (this.closed)
            throw new TenantqError("TRANSPORT", "client is closed", false);
        checkName("tenant", tenant, 128);
        checkName("op", op, 64);
        if (args !== undefined && args !== null && (typeof args !== "object" || Array.isArray(args)))
            throw usage("args must be an object");
        let key = opts.key;
        if (key !== undefined)
            checkName("key", key, 128);
        else if (opChangesState(op))
            key = makeKey();
        const dl = opts.deadlineMs;
        if (dl !== undefined && (!Number.isInteger(dl) || dl < 1 || dl > 86400000))
            throw usage(`deadlineMs must be an integer in 1..86400000, got ${dl}`);
        const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
        const attempts = Math.min(opts.attempts ?? this.attempts, 100);
        if (!Number.isInteger(timeoutMs) || timeoutMs < 1)
            throw usage(`timeoutMs must be a positive integer, got ${timeoutMs}`);
        const body = encodeRequest({ tenant, op, args: args ?? undefined, key,
            deadlineMs: dl, auth: this.auth });
        const order = endpointOrder(this.urls, tenant);
        await this.acquire();
        try {
            for (let attempt = 1; ; attempt++) {
                try {
                    const r = decodeReply(await this.exchange(order, body, timeoutMs));
                    return { result: r.result as T, replayed: r.replayed };
                } catch (e) {
                    if (!(e instanceof TenantqError) || attempt >= attempts || !e.retryable ||
                        this.closed)
                        throw e;
                }
                await this.sleep(backoffMs(attempt));
            }
        } finally {
            this.release();
        }
    }

    /** Calls in flight (started, not yet settled), waiting ones excluded. */
    get inFlight(): number {
        return this.inflight;
    }

    /** Reject every call in flight or waiting (TRANSPORT "client is closed")
     * and close every connection and timer: nothing keeps the process alive. */
    async close(): Promise<void> {
        if (this.closed)
            return;
        this.closed = true;
        for (const c of [...this.cancels])
            c();
        for (const w of this.slotQueue.splice(0))
            w(false);
        for (const ep of this.eps) {
            for (const t of [ep.retryTimer, ep.growTimer])
                if (t !== null)
                    clearTimeout(t);
            for (const w of ep.waiters)
                w.wake();
            for (const c of [...ep.conns, ...(ep.probe ? [ep.probe] : [])])
                c.destroy();
            ep.probe = null;
        }
        for (const p of [...this.pending.values()])
            p.done({ broken: true });
    }

    // ---- slots: the bound on calls in flight

    private acquire(): Promise<void> | void {
        if (this.inflight < this.maxInFlight) {
            this.inflight++;
            return;
        }
        return new Promise((resolve, reject) => this.slotQueue.push((ok) => {
            if (ok) {
                this.inflight++;
                resolve();
            } else {
                reject(new TenantqError("TRANSPORT", "client is closed", false));
            }
        }));
    }

    private release(): void {
        this.inflight--;
        const next = this.slotQueue.shift();
        if (next !== undefined)
            next(true);
    }

    private sleep(ms: number): Promise<void> {
        return new Promise((resolve) => {
            const cancel = (): void => {
                clearTimeout(t);
                this.cancels.delete(cancel);
                resolve();
            };
            const t = setTimeout(cancel, ms);
            this.cancels.add(cancel);
        });
    }

    // ---- endpoints

    private pick(order: number[]): number {
        for (const i of order)
            if (!this.eps[i].down)
                return i;
        return order[0];
    }

    /** A request found no connection to ep for the failover wait: if it has
     * none at all, mark it down and start its probe.  Returns whether ep is
     * down (never with one endpoint). */
    private markDown(i: number): boolean {
        const ep = this.eps[i];
        if (this.eps.length < 2 || ep.connected())
            return false;
        if (!ep.down) {
            ep.down = true;
            this.startProbe(ep);
        }
        return true;
    }

    /** The probe is a connection that never sends; its handshake says the
     * endpoint is back, and its tenants return to it. */
    private startProbe(ep: Endpoint): void {
        if (this.closed || !ep.down)
            return;
        const probe = new Conn(ep.addr, this.rcvMax, {
            ready: () => {
                ep.down = false;
                ep.probe = null;
                probe.destroy();
            },
            reply: () => undefined,
            closed: () => {
                if (ep.probe !== probe)
                    return;
                ep.probe = null;
                const t = setTimeout(() => this.startProbe(ep), RECONNECT_MS);
                t.unref();
                ep.retryTimer = t;
            },
        });
        ep.probe = probe;
    }

    /** A ready connection to ep with room for one more call, opening one
     * when needed; waits until `until` (ms) at most, then null. */
    private async connection(ep: Endpoint, until: number): Promise<Conn | null> {
        for (;;) {
            if (this.closed)
                return null;
            let best: Conn | null = null;
            for (const c of ep.conns)
                if (c.ready && c.pending < this.perConn && (best === null || c.pending < best.pending))
                    best = c;
            if (best !== null)
                return best;
            this.grow(ep);
            const left = until - Date.now();
            if (left <= 0)
                return null;
            await new Promise<void>((resolve) => {
                const w: Waiter = { wake: () => {
                    clearTimeout(t);
                    ep.waiters.delete(w);
                    resolve();
                } };
                const t = setTimeout(w.wake, left);
                ep.waiters.add(w);
            });
        }
    }

    /** Open another connection to ep if none is on its way and the ones it
     * has are full (at most after RECONNECT_MS since the last failure). */
    private grow(ep: Endpoint): void {
        if (this.closed || ep.connecting > 0 || ep.growTimer !== null)
            return;
        const wait = ep.nextConnect - Date.now();
        if (wait > 0) {
            ep.growTimer = setTimeout(() => {
                ep.growTimer = null;
                this.grow(ep);
            }, wait);
            return;
        }
        ep.connecting++;
        ep.conns.push(new Conn(ep.addr, this.rcvMax, this.events));
    }

    private endpointOf(c: Conn): Endpoint | undefined {
        return this.eps.find((ep) => ep.conns.includes(c));
    }

    private onReady(c: Conn): void {
        const ep = this.endpointOf(c);
        if (ep === undefined)
            return;
        ep.connecting--;
        ep.nextConnect = 0;
        for (const w of [...ep.waiters])
            w.wake();
    }

    private onClosed(c: Conn, violation: string | null): void {
        const ep = this.endpointOf(c);
        if (ep !== undefined) {
            if (!c.handshaken)
                ep.connecting--;
            if (violation !== null)
                ep.violation = violation;
            ep.conns = ep.conns.filter((x) => x !== c);
            ep.nextConnect = Date.now() + RECONNECT_MS;
            for (const w of [...ep.waiters])
                w.wake();
        }
        for (const p of [...this.pending.values()])
            if (p.conn === c)
                p.done({ broken: true });
    }

    private onReply(c: Conn, id: number, body: Uint8Array): void {
        const p = this.pending.get(id);
        if (p !== undefined && p.conn === c)
            p.done({ body });
        // else: the reply of a call that timed out or was re-sent: dropped
    }

    /** Send body on conn with a fresh id and wait for its reply, the
     * connection breaking, or the deadline. */
    private request(ep: Endpoint, conn: Conn, body: Uint8Array, deadline: number): Promise<Outcome> {
        const id = (0x80000000 | (this.nextId++ & 0x7fffffff)) >>> 0;
        return new Promise((resolve) => {
            const done = (o: Outcome): void => {
                if (!this.pending.delete(id))
                    return;
                clearTimeout(t);
                if (--conn.pending === 0)
                    conn.hold(false);
                for (const w of [...ep.waiters])
                    w.wake();
                resolve(o);
            };
            const t = setTimeout(() => done({ timeout: true }), Math.max(deadline - Date.now(), 1));
            this.pending.set(id, { conn, done });
            if (conn.pending++ === 0)
                conn.hold(true);
            conn.send(id, body);
        });
    }

    /** One attempt: deliver body to the tenant's endpoint (failing over, and
     * re-sending when the connection that carried it broke) and return the
     * reply body, or throw TIMEOUT / TRANSPORT. */
    private async exchange(order: number[], body: Uint8Array, timeoutMs: number):
        Promise<Uint8Array> {
        const deadline = Date.now() + timeoutMs;
        const wait = failoverWaitMs(timeoutMs);
        const multi = this.eps.length > 1;
        for (;;) {
            const i = this.pick(order);
            const ep = this.eps[i];
            const now = Date.now();
            const until = multi && deadline - now > wait ? now + wait : deadline;
            const conn = await this.connection(ep, until);
            if (this.closed)
                throw new TenantqError("TRANSPORT", "client is closed", false);
            if (conn === null) {
                if (Date.now() >= deadline) {
                    this.markDown(i); // the next call goes elsewhere
                    throw new TenantqError("TIMEOUT",
                        `endpoint ${ep.url}: could not send within ${timeoutMs} ms` + why(ep));
                }
                this.markDown(i);
                continue; // the next endpoint that is up, or wait here again
            }
            const o = await this.request(ep, conn, body, deadline);
            if ("body" in o)
                return o.body;
            if (this.closed)
                throw new TenantqError("TRANSPORT", "client is closed", false);
            if ("timeout" in o)
                throw new TenantqError("TIMEOUT",
                    `endpoint ${ep.url}: no reply within ${timeoutMs} ms (outcome unknown)` +
                    why(ep));
            if (Date.now() >= deadline)
                throw new TenantqError("TIMEOUT", `endpoint ${ep.url}: connection broke and ` +
                    `no reply within ${timeoutMs} ms (outcome unknown)` + why(ep));
            // the connection that carried it broke: send the same bytes again
        }
    }
}
