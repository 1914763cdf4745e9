// storefront-executor.mjs - the agent's update_page_section executor on
// tenantq.  Before, the executor read the draft, checked section ids in
// memory and wrote the draft back, so two concurrent calls could both pass
// the check and store a duplicate id.  Now the read-validate-write runs in
// the daemon, one tenant's edits at a time; the executor only maps the
// outcome to what the agent tells the user.
//
//   import { Client } from "tenantq";
//   const tq = new Client({ endpoints: [process.env.TENANTQ_ENDPOINT], attempts: 3 });
//   const run = updatePageSection(tq);
//   await run(tenantId, { pageName: "home", section: { type: "hero", id: "home-hero-main" } });

import { TenantqError } from "tenantq";

/** User-facing text for each failure the agent can meet. */
export function userMessage(e) {
    if (!(e instanceof TenantqError))
        return "Something went wrong while saving your change. Please try again.";
    switch (e.code) {
    case "DUPLICATE_SECTION_ID":
        return `That section id is already in use (${e.message}). Pick another id or edit ` +
            "the existing section.";
    case "NOT_FOUND":
        return "That section or page no longer exists; it may have been removed meanwhile.";
    case "INVALID_ARGUMENT":
        return `The change is not valid: ${e.message}`;
    case "DRAFT_TOO_LARGE":
        return "Your storefront draft is at its size limit. Remove or shorten a section first.";
    case "LOCK_TIMEOUT":
        return "Another change to this storefront is still being saved (it held the lock " +
            "longer than expected). Nothing was changed: please try again in a few seconds.";
    case "QUEUE_FULL":
    case "DEADLINE_EXCEEDED":
    case "SHUTTING_DOWN":
    case "DB_UNAVAILABLE":
        return "The storefront service is busy right now. Nothing was changed: please try " +
            "again in a moment.";
    case "TIMEOUT":
    case "TRANSPORT":
    case "OUTCOME_UNKNOWN":
        return "We could not confirm that your change was saved. Please check the page " +
            "before trying again.";
    default:
        return "Something went wrong while saving your change. Please try again.";
    }
}

/** The executor: (tenantId, {pageName, section, index?}) -> the agent's
 * result object.  key: pass the proposal's id so that a retried proposal
 * takes effect once. */
export function updatePageSection(client) {
    return async (tenantId, { pageName, section, index }, key) => {
        try {
            const r = await client.storefront.upsertSection(tenantId,
                { page: pageName, section, ...(index === undefined ? {} : { index }) },
                key === undefined ? undefined : { key });
            return { success: true, sectionId: r.id, page: r.page, index: r.index,
                created: r.created, version: r.version };
        } catch (e) {
            return { success: false, code: e instanceof TenantqError ? e.code : "INTERNAL",
                error: userMessage(e) };
        }
    };
}
