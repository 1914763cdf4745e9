// errors.ts - TenantqError: the one error type every failed call rejects
// with, whether the daemon answered with an error (its wire code) or the
// client gave up (TIMEOUT, TRANSPORT, PROTOCOL, USAGE).

/** Codes the daemon sends (wire protocol section 6) plus the client's own. */
export type TenantqCode =
    | "BAD_REQUEST" | "UNSUPPORTED_VERSION" | "UNKNOWN_OP" | "INVALID_ARGUMENT" | "NOT_FOUND"
    | "DUPLICATE_SECTION_ID" | "DRAFT_TOO_LARGE" | "IDEMPOTENCY_KEY_REUSED" | "QUEUE_FULL"
    | "DEADLINE_EXCEEDED" | "LOCK_TIMEOUT" | "DB_UNAVAILABLE" | "OUTCOME_UNKNOWN"
    | "SHUTTING_DOWN" | "INTERNAL" | "REJECTED" | "UNAUTHENTICATED"
    | "TIMEOUT" | "TRANSPORT" | "PROTOCOL" | "USAGE";

/** Codes known to this client; a daemon code outside this list is PROTOCOL. */
export const WIRE_CODES: ReadonlySet<string> = new Set([
    "BAD_REQUEST", "UNSUPPORTED_VERSION", "UNKNOWN_OP", "INVALID_ARGUMENT", "NOT_FOUND",
    "DUPLICATE_SECTION_ID", "DRAFT_TOO_LARGE", "IDEMPOTENCY_KEY_REUSED", "QUEUE_FULL",
    "DEADLINE_EXCEEDED", "LOCK_TIMEOUT", "DB_UNAVAILABLE", "OUTCOME_UNKNOWN", "SHUTTING_DOWN",
    "INTERNAL", "REJECTED", "UNAUTHENTICATED",
]);

export class TenantqError extends Error {
    /** The wire code ("DUPLICATE_SECTION_ID") or the client's own code. */
    readonly code: TenantqCode;
    /** Whether the same call may be made again unchanged (same key). */
    readonly retryable: boolean;

    constructor(code: TenantqCode, message: string, retryable?: boolean) {
        super(message);
        this.name = "TenantqError";
        this.code = code;
        this.retryable = retryable ?? (code === "TIMEOUT" || code === "TRANSPORT");
    }
}

export function usage(message: string): TenantqError {
    return new TenantqError("USAGE", message, false);
}
