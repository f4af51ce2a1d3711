// What the Node tests of `speck serve` share (web_chat.mjs, openai_client.mjs): starting and
// stopping a server on a free port with its log kept, counting checks, and reporting a missing
// dependency the way tests/reference/skips.py does (exit 77, or a failure when CI is set).
import { spawn } from "node:child_process";

export const SKIP = 77;

export function ci() {
  return !["", "0", "false"].includes((process.env.CI || "").toLowerCase());
}

// A dependency is not installed: the exit status to return (SKIP, or 1 under CI).
export function missing(what, how) {
  if (ci()) {
    console.log(`FAIL (CI is set, so a missing dependency fails): ${what} not found; ${how}`);
    return 1;
  }
  console.log(`SKIP: ${what} not found; ${how}`);
  return SKIP;
}

export class Checks {
  constructor() {
    this.passed = 0;
    this.failed = 0;
  }
  check(cond, msg) {
    if (cond) {
      this.passed++;
    } else {
      this.failed++;
      console.log("FAIL:", msg);
    }
    return !!cond;
  }
  // The closing line ctest's log shows; the exit status.
  finish() {
    console.log(`${this.passed} passed, ${this.failed} failed`);
    return this.failed ? 1 : 0;
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// `speck serve -m MODEL --port 0 ARGS...`; resolves once it prints its address.
export async function startServer(binary, model, args = [], env = {}) {
  const p = spawn(binary, ["serve", "-m", model, "--port", "0", ...args], {
    stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...env },
  });
  let log = "", exited = null;
  p.stderr.setEncoding("utf8");
  p.stderr.on("data", (d) => { log += d; });
  const gone = new Promise((r) => p.on("exit", (code, signal) => { exited = { code, signal }; r(); }));
  const t0 = Date.now();
  let port = null;
  while (!port && exited === null && Date.now() - t0 < 60000) {
    await sleep(30);
    const m = /http:\/\/127\.0\.0\.1:(\d+)/.exec(log);
    if (m) port = Number(m[1]);
  }
  if (!port) {
    if (exited === null) p.kill("SIGKILL");
    throw new Error("the server did not start: " + log);
  }
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    log: () => log,
    // Waits up to ms for a log line matching re; returns the match or null.
    async waitLog(re, ms = 10000) {
      const t = Date.now();
      for (;;) {
        const m = re.exec(log);
        if (m || Date.now() - t > ms) return m;
        await sleep(30);
      }
    },
    // SIGTERM; resolves to {code, signal, log} (SIGKILL after 30 s).
    async stop() {
      if (exited === null) {
        p.kill("SIGTERM");
        const timer = setTimeout(() => p.kill("SIGKILL"), 30000);
        await gone;
        clearTimeout(timer);
      }
      return { ...exited, log };
    },
  };
}

// The checks every server gets when it stops: a clean exit, no sanitizer report.
export async function stopServer(s, t, name) {
  const { code, signal, log } = await s.stop();
  t.check(code === 0, `${name}: exit status ${code} (signal ${signal}) on SIGTERM`);
  t.check(!/AddressSanitizer|LeakSanitizer|runtime error/.test(log),
    `${name}: sanitizer report:\n${log.slice(-3000)}`);
  return log;
}
