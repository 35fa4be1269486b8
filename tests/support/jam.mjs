// The standalone binary for the JavaScript tests (clients/ts, tests/socketio, tests/web):
// started on a free port (it writes the address it bound to JAM_ADDR_FILE), and tokens
// signed by its `gentoken`. No dependencies.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const bin = join(root, "target", "debug", "jam");

/** A token for `sub` signed with `secret` (the development one when unset). */
export function gentoken(sub, { secret, tenant, ttl } = {}) {
  const args = ["gentoken", "--sub", sub, "--name", sub.toUpperCase()];
  if (tenant) args.push("--tenant", tenant);
  if (ttl) args.push("--ttl", String(ttl));
  const env = { ...process.env };
  if (secret) env.JAM_JWT_SECRET = secret;
  else delete env.JAM_JWT_SECRET;
  return execFileSync(bin, args, { env }).toString().trim();
}

/**
 * Start `jam` with `env` on top of the test's (a `null` value removes a variable); resolves
 * with its HTTP base URL once it has bound its port, within 5 s.
 */
export async function startJam(env = {}) {
  if (!existsSync(bin)) throw new Error(`${bin}: run cargo build first`);
  const addrFile = join(mkdtempSync(join(tmpdir(), "jam-js-")), "addr");
  const full = {
    ...process.env,
    JAM_LISTEN_ADDR: "127.0.0.1:0",
    JAM_WORKER_LISTEN_ADDR: "127.0.0.1:0",
    JAM_ADDR_FILE: addrFile,
    JAM_LOG: "warn",
  };
  for (const [k, v] of Object.entries(env)) {
    if (v === null) delete full[k];
    else full[k] = v;
  }
  const proc = spawn(bin, [], { env: full, stdio: ["ignore", "inherit", "inherit"] });
  for (let i = 0; i < 100 && !existsSync(addrFile); i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(addrFile)) {
    proc.kill();
    throw new Error("jam did not bind its port within 5 s");
  }
  const base = `http://${readFileSync(addrFile, "utf8").trim()}`;
  return { proc, base, ws: `${base.replace(/^http/, "ws")}/ws` };
}
