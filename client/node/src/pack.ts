// pack.ts - the request encoder: JSON-like values to msgpack exactly as the
// reference encoder writes them (smallest integer form, float64 for other
// numbers, str8 for 32..255-byte strings, maps in insertion order), refusing
// in the same walk what the daemon would refuse in args.  Our own encoder
// rather than @msgpack/msgpack's, which writes integers beyond 32 bits as
// float64 once 64-bit integers are enabled.  Pure: no I/O.

import { TenantqError } from "./errors.js";

/** Nesting limit of a whole request (the request map is level 1, args 2). */
export const MAX_DEPTH = 32;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
// a surrogate that is not half of a pair
export const LONE_SURROGATE =
    /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function bad(path: string, what: string): TenantqError {
    return new TenantqError("INVALID_ARGUMENT", `${path}: ${what} cannot be represented in JSON`,
        false);
}

function typeName(v: object): string {
    if (v instanceof Date)
        return "a Date";
    if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer)
        return "binary data";
    if (v instanceof Map)
        return "a Map (use a plain object)";
    return `an object of class ${v.constructor?.name ?? "?"}`;
}

export class Packer {
    private buf = Buffer.allocUnsafe(512);
    private pos = 0;

    /** The bytes written so far (a copy) and a reset for the next value. */
    take(): Uint8Array {
        const out = Buffer.from(this.buf.subarray(0, this.pos));
        this.pos = 0;
        return out;
    }

    private room(n: number): void {
        if (this.pos + n <= this.buf.length)
            return;
        const b = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
        this.buf.copy(b, 0, 0, this.pos);
        this.buf = b;
    }

    private u8(tag: number): void {
        this.room(1);
        this.buf[this.pos++] = tag;
    }

    private head(tag: number, n: number, bytes: number): void {
        this.room(1 + bytes);
        this.buf[this.pos++] = tag;
        if (bytes === 1)
            this.buf[this.pos] = n;
        else if (bytes === 2)
            this.buf.writeUInt16BE(n, this.pos);
        else
            this.buf.writeUInt32BE(n, this.pos);
        this.pos += bytes;
    }

    private int(n: number | bigint): void {
        if (typeof n === "bigint") {
            if (n >= -0x80000000n && n < 0x100000000n)
                return this.int(Number(n));
            this.room(9);
            this.buf[this.pos++] = n >= 0n ? 0xcf : 0xd3;
            if (n >= 0n)
                this.buf.writeBigUInt64BE(n, this.pos);
            else
                this.buf.writeBigInt64BE(n, this.pos);
            this.pos += 8;
            return;
        }
        if (n >= 0) {
            if (n < 0x80)
                return this.u8(n);
            if (n < 0x100)
                return this.head(0xcc, n, 1);
            if (n < 0x10000)
                return this.head(0xcd, n, 2);
            if (n < 0x100000000)
                return this.head(0xce, n, 4);
            return this.int(BigInt(n));
        }
        if (n >= -0x20)
            return this.u8(n & 0xff);
        if (n >= -0x80) {
            this.room(2);
            this.buf[this.pos++] = 0xd0;
            this.buf.writeInt8(n, this.pos++);
            return;
        }
        if (n >= -0x8000) {
            this.room(3);
            this.buf[this.pos++] = 0xd1;
            this.buf.writeInt16BE(n, this.pos);
            this.pos += 2;
            return;
        }
        if (n >= -0x80000000) {
            this.room(5);
            this.buf[this.pos++] = 0xd2;
            this.buf.writeInt32BE(n, this.pos);
            this.pos += 4;
            return;
        }
        this.room(9);
        this.buf[this.pos++] = 0xd3;
        this.buf.writeBigInt64BE(BigInt(n), this.pos);
        this.pos += 8;
    }

    /** A string; path names it in errors. */
    str(s: string, path: string): void {
        if (s.includes("\u0000"))
            throw new TenantqError("INVALID_ARGUMENT", `${path}: U+0000 in a string`, false);
        if (LONE_SURROGATE.test(s))
            throw new TenantqError("INVALID_ARGUMENT",
                `${path}: a lone UTF-16 surrogate is not valid UTF-8`, false);
        const n = Buffer.byteLength(s, "utf8");
        if (n < 32)
            this.u8(0xa0 | n);
        else if (n < 0x100)
            this.head(0xd9, n, 1);
        else if (n < 0x10000)
            this.head(0xda, n, 2);
        else
            this.head(0xdb, n, 4);
        this.room(n);
        this.pos += this.buf.write(s, this.pos, "utf8");
    }

    /** Any value at nesting level `level` of the request (args is 2). */
    value(v: unknown, path: string, level: number): void {
        switch (typeof v) {
        case "string":
            return this.str(v, path);
        case "boolean":
            return this.u8(v ? 0xc3 : 0xc2);
        case "number":
            if (Number.isSafeInteger(v))
                return this.int(v);
            if (!Number.isFinite(v))
                throw bad(path, String(v));
            this.room(9);
            this.buf[this.pos++] = 0xcb;
            this.buf.writeDoubleBE(v, this.pos);
            this.pos += 8;
            return;
        case "bigint":
            if (v < INT64_MIN || v > INT64_MAX)
                throw bad(path, "an integer outside the 64-bit signed range");
            return this.int(v);
        case "undefined":
            return this.u8(0xc0); // in an array, as JSON.stringify's null
        case "object":
            break;
        default:
            throw bad(path, `a ${typeof v}`);
        }
        if (v === null)
            return this.u8(0xc0);
        if (level > MAX_DEPTH)
            throw new TenantqError("INVALID_ARGUMENT",
                `${path}: nested deeper than ${MAX_DEPTH} levels counted from the request`, false);
        if (Array.isArray(v)) {
            const n = v.length;
            if (n < 16)
                this.u8(0x90 | n);
            else if (n < 0x10000)
                this.head(0xdc, n, 2);
            else
                this.head(0xdd, n, 4);
            for (let i = 0; i < n; i++)
                this.value(v[i], `${path}[${i}]`, level + 1);
            return;
        }
        const proto = Object.getPrototypeOf(v);
        if (proto !== Object.prototype && proto !== null)
            throw bad(path, typeName(v));
        const o = v as Record<string, unknown>;
        const keys = Object.keys(o).filter((k) => o[k] !== undefined); // undefined = absent
        this.mapHead(keys.length);
        for (const k of keys) {
            this.str(k, `${path}.${k}`);
            this.value(o[k], `${path}.${k}`, level + 1);
        }
    }

    mapHead(n: number): void {
        if (n < 16)
            this.u8(0x80 | n);
        else if (n < 0x10000)
            this.head(0xde, n, 2);
        else
            this.head(0xdf, n, 4);
    }
}
