// storefront.ts - typed helpers for the storefront ops (wire protocol
// section 5); each is a plain call() with the op's argument and result types.

import type { CallOptions, Client } from "./client.js";
import type { JsonValue } from "./codec.js";

/** A section: `type` (a name), optional `id`, any other fields kept as given. */
export interface Section {
    type: string;
    id?: string;
    [field: string]: JsonValue | undefined;
}

export interface Draft {
    pages: { [page: string]: { sections: Section[]; [field: string]: JsonValue | undefined } };
    [field: string]: JsonValue | undefined;
}

export interface UpsertArgs { page: string; section: Section; index?: number }
export interface UpsertResult { id: string; page: string; index: number; created: boolean; version: number }
export interface RemoveResult { page: string; index: number; version: number }
export interface MoveArgs { id: string; page: string; index: number }
export interface MoveResult { page: string; index: number; version: number }
export interface DraftResult { draft: Draft; version: number }
export interface VersionResult { version: number }

export class Storefront {
    constructor(private readonly client: Client) {}

    /** Replace the section at index, or append (index absent or = length). */
    upsertSection(tenant: string, args: UpsertArgs, opts?: CallOptions): Promise<UpsertResult> {
        return this.client.call<UpsertResult>(tenant, "section.upsert", { ...args }, opts);
    }

    removeSection(tenant: string, id: string, opts?: CallOptions): Promise<RemoveResult> {
        return this.client.call<RemoveResult>(tenant, "section.remove", { id }, opts);
    }

    moveSection(tenant: string, args: MoveArgs, opts?: CallOptions): Promise<MoveResult> {
        return this.client.call<MoveResult>(tenant, "section.move", { ...args }, opts);
    }

    getDraft(tenant: string, opts?: CallOptions): Promise<DraftResult> {
        return this.client.call<DraftResult>(tenant, "draft.get", undefined, opts);
    }

    publish(tenant: string, opts?: CallOptions): Promise<VersionResult> {
        return this.client.call<VersionResult>(tenant, "draft.publish", undefined, opts);
    }

    discard(tenant: string, opts?: CallOptions): Promise<VersionResult> {
        return this.client.call<VersionResult>(tenant, "draft.discard", undefined, opts);
    }

    ping(tenant: string, opts?: CallOptions): Promise<{ pong: true }> {
        return this.client.call<{ pong: true }>(tenant, "ping", undefined, opts);
    }
}
