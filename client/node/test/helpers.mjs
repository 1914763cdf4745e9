// helpers.mjs - what the Node tests need around the client: a database on
// the test server (TQ_TEST_DATABASE, an admin conninfo), real tenantqd
// processes from TQ_BUILD_DIR, and SQL reads through psql for the checks.
// scripts/test sets both variables; a test run without them fails at once.

import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Client, TenantqError } from "../dist/esm/index.js";

export function env(name) {
    const v = process.env[name];
    if (!v)
        throw new Error(`${name} is not set (run scripts/test)`);
    return v;
}

export const buildDir = () => env("TQ_BUILD_DIR");
export const daemonBin = () => join(buildDir(), "daemon", "tenantqd");
export const cliBin = () => join(buildDir(), "client", "tenantq");

export function psql(conninfo, sql) {
    return execFileSync("psql", ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo,
        "-c", sql], { encoding: "utf8",
        env: { ...process.env, PGOPTIONS: "-c client_min_messages=warning" } }).trim();
}

let dbCounter = 0;

/** A new database with tenantq's schema; returns {name, conninfo, drop()}. */
export function createDatabase() {
    const admin = env("TQ_TEST_DATABASE");
    const name = `tq_node_${process.pid}_${dbCounter++}`;
    psql(admin, `DROP DATABASE IF EXISTS ${name}`);
    psql(admin, `CREATE DATABASE ${name}`);
    const conninfo = `${admin} dbname=${name}`;
    execFileSync(daemonBin(), ["--database", conninfo, "--init-db"], { stdio: "pipe" });
    return { name, conninfo,
        drop: () => psql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/** The draft's sections of tenant's page (parsed JSON), [] without a row. */
export function sections(conninfo, tenant, page) {
    const t = tenant.replace(/'/g, "''");
    const out = psql(conninfo, `SELECT draft->'pages'->'${page}'->'sections' ` +
        `FROM tenantq_storefront WHERE tenant = '${t}'`);
    return out === "" ? [] : JSON.parse(out);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A tenantqd process on its own ipc socket (or `listen`), flags as given. */
export class Daemon {
    constructor(conninfo, extra = [], listen = null) {
        this.dir = mkdtempSync(join(tmpdir(), "tq-node-"));
        this.endpoint = listen ?? `ipc://${this.dir}/tq.sock`;
        this.conninfo = conninfo;
        this.extra = extra;
        this.conf = join(this.dir, "tenantqd.conf");
        writeFileSync(this.conf, "; node test: everything comes from flags\n");
        this.logPath = join(this.dir, "stderr.log");
        this.start();
    }

    start() {
        writeFileSync(this.logPath, "", { flag: "a" });
        const args = ["-c", this.conf, "--listen", this.endpoint, "--database", this.conninfo,
            "--metrics-listen", "", ...this.extra];
        this.proc = spawn(daemonBin(), args, { stdio: ["ignore", "ignore", "pipe"] });
        this.proc.stderr.on("data", (d) => writeFileSync(this.logPath, d, { flag: "a" }));
        this.exited = new Promise((r) => this.proc.on("exit", (code, sig) => r({ code, sig })));
    }

    log() {
        return readFileSync(this.logPath, "utf8");
    }

    /** Set `auth` (the token of an --auth-token-file) before ready(). */
    async ready(timeoutMs = 20000) {
        const c = new Client({ endpoints: [this.endpoint], timeoutMs: 500, auth: this.auth });
        const until = Date.now() + timeoutMs;
        try {
            for (;;) {
                try {
                    await c.call("ping", "ping");
                    return this;
                } catch (e) {
                    if (!(e instanceof TenantqError) || Date.now() > until)
                        throw new Error(`tenantqd not ready: ${e}\n${this.log()}`);
                }
                await sleep(50);
            }
        } finally {
            await c.close();
        }
    }

    async kill(sig = "SIGKILL") {
        this.proc.kill(sig);
        return this.exited;
    }

    /** SIGTERM, and the exit status must be 0. */
    async stop() {
        if (this.proc.exitCode === null && this.proc.signalCode === null)
            this.proc.kill("SIGTERM");
        const r = await this.exited;
        rmSync(this.dir, { recursive: true, force: true });
        if (r.code !== 0 && r.sig !== "SIGKILL")
            throw new Error(`tenantqd exited with ${r.code}/${r.sig}\n${this.log()}`);
    }
}

export async function startDaemon(conninfo, extra = [], listen = null) {
    return new Daemon(conninfo, extra, listen).ready();
}
