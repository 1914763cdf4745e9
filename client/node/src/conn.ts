// conn.ts - one SP connection to a REP peer (nanomsg's wire format), over a
// unix socket (ipc://PATH) or TCP (tcp://HOST:PORT), with node:net.
//
// Handshake: both sides send 8 bytes `00 53 50 00`, the protocol id as a
// big-endian u16 (REQ 0x0030, REP 0x0031) and two zero bytes; messages flow
// only after the peer's header arrived, which must happen within
// HANDSHAKE_MS.  Frames: tcp `[u64 BE length][payload]`, ipc
// `[0x01][u64 BE length][payload]`; a REQ payload is `[u32 BE request id,
// bit 31 set][body]` and the reply echoes the id.  Each frame is written
// with one write, so no stray byte can ever open a frame (nanomsg aborts on
// an ipc type byte other than 0x01).  A frame longer than the receive limit,
// a wrong handshake or a wrong type byte is a protocol violation: the
// connection is destroyed before anything is allocated for the frame.

import { Socket, createConnection } from "node:net";

export const HANDSHAKE_MS = 1000;
const REQ_HEADER = Buffer.from([0x00, 0x53, 0x50, 0x00, 0x00, 0x30, 0x00, 0x00]);
const REP_ID = 0x0031;

export interface Address { ipc?: string; host?: string; port?: number }

/** Parse "ipc:///path" or "tcp://host:port" (IPv6 as [addr]:port); null if
 * it is neither. */
export function parseEndpoint(url: string): Address | null {
    if (url.startsWith("ipc://") && url.length > 6)
        return { ipc: url.slice(6) };
    const m = /^tcp:\/\/(\[[^\]]+\]|[^:/[\]]+):(\d{1,5})$/.exec(url);
    if (m === null || Number(m[2]) < 1 || Number(m[2]) > 65535)
        return null;
    return { host: m[1].replace(/^\[|\]$/g, ""), port: Number(m[2]) };
}

/** A whole frame: [0x01 on ipc][u64 BE 4 + body length][u32 BE id][body]. */
export function frame(ipc: boolean, id: number, body: Uint8Array): Buffer {
    const hl = ipc ? 9 : 8;
    const f = Buffer.allocUnsafe(hl + 4 + body.length);
    if (ipc)
        f[0] = 0x01;
    f.writeBigUInt64BE(BigInt(4 + body.length), hl - 8);
    f.writeUInt32BE(id >>> 0, hl);
    f.set(body, hl + 4);
    return f;
}

export const HANDSHAKE_REQ = REQ_HEADER;

export interface ConnEvents {
    /** The handshake completed: requests may be sent. */
    ready(c: Conn): void;
    /** A reply frame arrived (body without the id). */
    reply(c: Conn, id: number, body: Uint8Array): void;
    /** The connection is gone; violation says why if the peer misbehaved. */
    closed(c: Conn, violation: string | null): void;
}

export class Conn {
    ready = false;
    pending = 0; // calls in flight on it (kept by the owner)
    private readonly sock: Socket;
    private readonly ipc: boolean;
    private buf: Buffer = Buffer.alloc(0);
    handshaken = false; // the peer's SP header arrived (set once)
    private timer: NodeJS.Timeout | null;
    private done = false;

    constructor(addr: Address, private readonly rcvMax: number, private readonly ev: ConnEvents) {
        this.ipc = addr.ipc !== undefined;
        this.sock = addr.ipc !== undefined ? createConnection({ path: addr.ipc })
            : createConnection({ host: addr.host!, port: addr.port! });
        if (!this.ipc)
            this.sock.setNoDelay(true);
        this.sock.unref();
        this.sock.on("connect", () => this.sock.write(REQ_HEADER));
        this.sock.on("data", (d: Buffer) => this.onData(d));
        this.sock.on("error", () => this.finish(null));
        this.sock.on("close", () => this.finish(null));
        this.timer = setTimeout(() => this.finish(
            `no SP handshake within ${HANDSHAKE_MS} ms`), HANDSHAKE_MS);
        this.timer.unref();
    }

    /** Keep the process alive while calls are in flight on it. */
    hold(on: boolean): void {
        if (on)
            this.sock.ref();
        else
            this.sock.unref();
    }

    /** Send one request frame (the connection must be ready). */
    send(id: number, body: Uint8Array): void {
        this.sock.write(frame(this.ipc, id, body));
    }

    destroy(): void {
        this.finish(null);
    }

    private finish(violation: string | null): void {
        if (this.done)
            return;
        this.done = true;
        this.ready = false;
        if (this.timer !== null)
            clearTimeout(this.timer);
        this.sock.destroy();
        this.ev.closed(this, violation);
    }

    private onData(d: Buffer): void {
        this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
        if (!this.handshaken) {
            if (this.buf.length < 8)
                return;
            const h = this.buf;
            if (h[0] !== 0 || h[1] !== 0x53 || h[2] !== 0x50 || h[3] !== 0 ||
                h.readUInt16BE(4) !== REP_ID)
                return this.finish(`wrong SP handshake ${h.subarray(0, 8).toString("hex")} ` +
                    "(expected 00535000 00310000, a REP socket)");
            this.handshaken = true;
            this.ready = true;
            clearTimeout(this.timer!);
            this.timer = null;
            this.buf = this.buf.subarray(8);
            this.ev.ready(this);
        }
        const hl = this.ipc ? 9 : 8;
        while (!this.done && this.buf.length >= hl) {
            const b = this.buf;
            if (this.ipc && b[0] !== 0x01)
                return this.finish(`ipc frame type byte 0x${b[0].toString(16)} (expected 0x01)`);
            const len = b.readBigUInt64BE(hl - 8);
            if (len > BigInt(this.rcvMax))
                return this.finish(`a frame of ${len} bytes exceeds the receive limit of ` +
                    `${this.rcvMax} bytes`);
            const n = Number(len);
            if (b.length < hl + n)
                return;
            const payload = b.subarray(hl, hl + n);
            this.buf = b.subarray(hl + n);
            // a payload without a request id (or without bit 31) is not ours
            if (n >= 4 && (payload[0] & 0x80) !== 0)
                this.ev.reply(this, payload.readUInt32BE(0), payload.subarray(4));
        }
        if (this.buf.length === 0)
            this.buf = Buffer.alloc(0);
    }
}
