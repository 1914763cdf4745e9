// route.ts - which endpoint a tenant's calls go to: rendezvous hashing with
// exactly libtenantq's score, so a tenant reaches the same daemon from C and
// from Node.  score = fmix64(FNV-1a-64(endpoint || 0x00 || tenant)), both
// strings as UTF-8 bytes; the highest score wins, ties to the endpoint
// listed first.

const MASK = (1n << 64n) - 1n;
const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;

function fnv1a64(h: bigint, bytes: Uint8Array): bigint {
    for (const b of bytes)
        h = ((h ^ BigInt(b)) * FNV_PRIME) & MASK;
    return h;
}

function fmix64(k: bigint): bigint {
    k ^= k >> 33n;
    k = (k * 0xff51afd7ed558ccdn) & MASK;
    k ^= k >> 33n;
    k = (k * 0xc4ceb9fe1a85ec53n) & MASK;
    k ^= k >> 33n;
    return k;
}

const utf8 = new TextEncoder();

/** The rendezvous score of (endpoint, tenant), an unsigned 64-bit value. */
export function rendezvousScore(endpoint: string, tenant: string): bigint {
    let h = fnv1a64(FNV_OFFSET, utf8.encode(endpoint));
    h = fnv1a64(h, new Uint8Array([0]));
    return fmix64(fnv1a64(h, utf8.encode(tenant)));
}

/** Endpoint indexes in the tenant's order of preference, best first. */
export function endpointOrder(endpoints: readonly string[], tenant: string): number[] {
    if (endpoints.length === 1)
        return [0];
    const scored = endpoints.map((e, i) => ({ i, s: rendezvousScore(e, tenant) }));
    // stable sort: equal scores keep list order
    scored.sort((a, b) => (a.s < b.s ? 1 : a.s > b.s ? -1 : 0));
    return scored.map((x) => x.i);
}
