// failover_client.mjs ENDPOINT TENANT PREFIX SECONDS - a keyed client of the
// Node library (client/node, built into its dist/) for test_failover.py.
// It appends sections {id: KEY, type: "item", k: KEY} to TENANT's page home,
// KEY = PREFIX-<n>, one at a time, for SECONDS seconds, and then finishes the
// edit in hand.  Each edit is sent until it is ok, always with the same key:
// a retryable daemon error, TIMEOUT or TRANSPORT (the outcome unknown) is
// retried after 50 ms; any other error ends the run with exit 2.  One JSON
// line per reply on stdout: {"key", "ok": true, "replayed", "version"} or
// {"key", "code", "retryable"}.

import { Client, TenantqError } from "../../client/node/dist/esm/index.js";

const [endpoint, tenant, prefix, seconds] = process.argv.slice(2);
const until = Date.now() + Number(seconds) * 1000;
const tq = new Client({ endpoints: [endpoint], timeoutMs: 3000, attempts: 1 });
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
// stdout is a pipe the test reads only at the end: past the pipe's buffer
// Node queues the writes, and process.exit() would drop what is queued
// (the acknowledgements of the last edits).  Exit once stdout has drained.
const exit = (code) => process.stdout.write("", () => process.exit(code));
let rc = 0;
try {
    for (let n = 0; Date.now() < until; n++) {
        const key = `${prefix}-${n}`;
        const args = { page: "home", section: { id: key, type: "item", k: key } };
        for (;;) {
            try {
                const r = await tq.callFull(tenant, "section.upsert", args, { key });
                out({ key, ok: true, replayed: r.replayed, version: r.result.version });
                break;
            } catch (e) {
                if (!(e instanceof TenantqError))
                    throw e;
                out({ key, code: e.code, retryable: e.retryable });
                if (!e.retryable && e.code !== "TIMEOUT" && e.code !== "TRANSPORT") {
                    rc = 2;
                    break;
                }
                await new Promise((r) => setTimeout(r, 50));
            }
        }
        if (rc)
            break;
    }
} finally {
    await tq.close();
}
exit(rc);
