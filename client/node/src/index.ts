// index.ts - the package's public surface.
export { Client, backoffMs, failoverWaitMs, DEFAULT_TIMEOUT_MS, DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_PER_CONNECTION, DEFAULT_RCVMAX, FAILOVER_MS } from "./client.js";
export type { ClientOptions, CallOptions, CallResult } from "./client.js";
export { TenantqError } from "./errors.js";
export type { TenantqCode } from "./errors.js";
export type { JsonValue, JsonObject } from "./codec.js";
export { encodeRequest, decodeReply, makeKey, opChangesState } from "./codec.js";
export { rendezvousScore, endpointOrder } from "./route.js";
export { Storefront } from "./storefront.js";
export type { Section, Draft, UpsertArgs, UpsertResult, RemoveResult, MoveArgs, MoveResult,
    DraftResult, VersionResult } from "./storefront.js";
export { frame, parseEndpoint, HANDSHAKE_REQ } from "./conn.js";
