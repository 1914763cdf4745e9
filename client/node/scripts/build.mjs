// Build dist/esm (ES modules) and dist/cjs (CommonJS) from src/ with tsc,
// each with its .d.ts declarations.  Run by `npm run build` and `prepare`
// (so `npm pack` and `npm install` from a checkout build it).
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
rmSync(join(root, "dist"), { recursive: true, force: true });
for (const [dir, module, type] of [["esm", "es2022", "module"], ["cjs", "commonjs", "commonjs"]]) {
    const out = join(root, "dist", dir);
    execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.json"), "--outDir", out,
        "--module", module, "--moduleResolution", module === "commonjs" ? "node10" : "bundler"],
    { stdio: "inherit" });
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, "package.json"), JSON.stringify({ type }) + "\n");
}
