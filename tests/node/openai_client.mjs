// Real clients against `speck serve`: the official `openai` npm package, unchanged (base URL and
// key only), and curl. models.list, completions and chat completions, streamed (for await over
// the chunks) and not, agree with each other and with curl; a bad request is the SDK's
// BadRequestError (an APIError, status 400), an unknown model its NotFoundError, a wrong key its
// AuthenticationError; usage counts the prompt tokens taken from the prefix cache; aborting a
// stream cancels the request on the server.
//
// usage: node openai_client.mjs SPECK_BINARY MODEL.gguf     (exit 77: a dependency is missing)
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { Checks, missing, startServer, stopServer } from "./serve_harness.mjs";

const [binary, model] = process.argv.slice(2);
if (!binary || !model) {
  console.log("usage: node openai_client.mjs SPECK_BINARY MODEL.gguf");
  process.exit(2);
}
if (!existsSync(model)) process.exit(missing(model, "the default model is part of the repository"));
let OpenAI;
try {
  OpenAI = (await import("openai")).default;
} catch (e) {
  process.exit(missing("the openai npm package", "scripts/deps.sh --test installs tests/node's packages"));
}
if (spawnSync("curl", ["--version"]).status !== 0) {
  process.exit(missing("curl", "scripts/deps.sh --test installs it"));
}

const t = new Checks();
const check = t.check.bind(t);
const KEY = "sekret";

function curl(url, body, extra = []) {
  const r = spawnSync("curl", ["-sS", "-N", "--max-time", "60", "-H", "Content-Type: application/json",
    "-H", `Authorization: Bearer ${KEY}`, ...extra, "-d", JSON.stringify(body), url], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`curl exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

async function expectError(what, fn, cls, status) {
  try {
    await fn();
    check(false, `${what}: no error`);
  } catch (e) {
    check(e instanceof OpenAI.APIError && e instanceof cls && e.status === status &&
          typeof e.message === "string" && e.message.length > 0,
          `${what}: ${e && e.constructor && e.constructor.name} status ${e && e.status}: ${e && e.message}`);
    return e;
  }
  return null;
}

async function run(s) {
  const client = new OpenAI({ baseURL: s.url + "/v1", apiKey: KEY, maxRetries: 0, timeout: 60000 });

  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  check(ids.length === 1 && ids[0] === "default.gguf", `models.list: ${ids}`);
  const id = ids[0];

  // Completions: non-streaming, then streamed; the same greedy text.
  const cq = { model: id, prompt: "def fib(n):\n    ", max_tokens: 24, temperature: 0 };
  const c = await client.completions.create(cq);
  const ctext = c.choices[0].text;
  check(c.object === "text_completion" && typeof ctext === "string" && c.usage.completion_tokens > 0 &&
        c.usage.completion_tokens <= 24 && ["length", "stop"].includes(c.choices[0].finish_reason),
        `completion: ${JSON.stringify(c)}`);
  let streamed = "";
  for await (const chunk of await client.completions.create({ ...cq, stream: true })) {
    if (chunk.choices.length) streamed += chunk.choices[0].text;
  }
  check(streamed === ctext, `streamed completion ${JSON.stringify(streamed)} != ${JSON.stringify(ctext)}`);

  // The prefix cache, as usage reports it: a prompt sent again takes its whole 16-token blocks
  // (all but the last token) from the cache.
  const repeated = { model: id, max_tokens: 2, temperature: 0,
                 prompt: Array.from({ length: 12 }, (_, i) => `def handler_${i}(request):\n    pass\n`).join("") };
  const first = await client.completions.create(repeated);
  const again = await client.completions.create(repeated);
  const pt = first.usage.prompt_tokens, k0 = first.usage.prompt_tokens_details.cached_tokens,
        k1 = again.usage.prompt_tokens_details.cached_tokens;
  check(pt >= 64 && k0 === 0 && k1 === Math.floor((pt - 1) / 16) * 16,
    `cached_tokens: ${k0} then ${k1} of ${pt} prompt tokens`);

  // Chat: non-streaming, streamed (role first, usage last), and curl; the same greedy text.
  const messages = [{ role: "system", content: "You write C." }, { role: "user", content: "Write a loop." }];
  const q = { model: id, messages, max_tokens: 24, temperature: 0 };
  const r = await client.chat.completions.create(q);
  const text = r.choices[0].message.content;
  check(r.object === "chat.completion" && r.choices[0].message.role === "assistant" &&
        typeof text === "string" && text.length > 0, `chat: ${JSON.stringify(r)}`);
  check(r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, "chat usage");
  let out = "", role = null, finish = null, usage = null, n = 0;
  const stream = await client.chat.completions.create({ ...q, stream: true,
                                                        stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    n++;
    check(chunk.object === "chat.completion.chunk", `chunk object ${chunk.object}`);
    if (chunk.usage) usage = chunk.usage;
    const ch = chunk.choices[0];
    if (!ch) continue;
    if (ch.delta.role) role = role || ch.delta.role;
    if (ch.delta.content) out += ch.delta.content;
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  check(n > 2 && role === "assistant" && out === text && finish === r.choices[0].finish_reason,
    `chat stream: ${n} chunks, role ${role}, ${JSON.stringify(out)} vs ${JSON.stringify(text)}, ${finish}`);
  check(usage && usage.completion_tokens === r.usage.completion_tokens, `stream usage ${JSON.stringify(usage)}`);

  const viaCurl = JSON.parse(curl(s.url + "/v1/chat/completions", q));
  check(viaCurl.choices[0].message.content === text, `curl: ${JSON.stringify(viaCurl)}`);
  const events = curl(s.url + "/v1/chat/completions", { ...q, stream: true }).split("\n\n").filter((e) => e.trim());
  check(events.length > 2 && events[events.length - 1] === "data: [DONE]" &&
        events.every((e) => e.startsWith("data: ")), "curl stream: events");
  const curlText = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)).choices[0].delta.content || "").join("");
  check(curlText === text, `curl stream ${JSON.stringify(curlText)} != ${JSON.stringify(text)}`);
  const noKey = spawnSync("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", s.url + "/v1/models"],
    { encoding: "utf8" });
  check(noKey.stdout === "401", `curl without the key: ${noKey.stdout}`);

  // Errors: the SDK's error classes with the server's status and message.
  const e400 = await expectError("max_tokens -3", () => client.chat.completions.create({ ...q, max_tokens: -3 }),
    OpenAI.BadRequestError, 400);
  check(e400 && /max_tokens/.test(e400.message), `400 message names the field: ${e400 && e400.message}`);
  await expectError("empty messages", () => client.chat.completions.create({ ...q, messages: [] }),
    OpenAI.BadRequestError, 400);
  await expectError("unknown model", () => client.completions.create({ ...cq, model: "gpt-4" }),
    OpenAI.NotFoundError, 404);
  const wrong = new OpenAI({ baseURL: s.url + "/v1", apiKey: "wrong", maxRetries: 0 });
  await expectError("wrong key", () => wrong.chat.completions.create(q), OpenAI.AuthenticationError, 401);
  await expectError("wrong key (models)", () => wrong.models.list(), OpenAI.AuthenticationError, 401);

  // Aborting a stream (the SDK's AbortSignal) cancels the request on the server.
  const ac = new AbortController();
  let got = 0, aborted = false;
  try {
    // ignore_eos (llama-server's extension, passed through by the SDK): the answer cannot end
    // on its own before the abort reaches the server.
    const long = await client.chat.completions.create({ ...q, max_tokens: 1500, ignore_eos: true,
                                                         stream: true }, { signal: ac.signal });
    for await (const chunk of long) {
      if (chunk.choices[0] && chunk.choices[0].delta.content && ++got === 3) ac.abort();
    }
  } catch (e) {
    aborted = e instanceof OpenAI.APIUserAbortError || e.name === "AbortError";
  }
  check(aborted || got >= 3, `abort: ${got} chunks, aborted ${aborted}`);
  const m = await s.waitLog(/POST \/v1\/chat\/completions 200 \S+ prompt=\d+ completion=(\d+) finish=cancelled/);
  check(m && Number(m[1]) < 1500, `the server logged no cancelled request:\n${s.log().slice(-1500)}`);
}

const servers = [];
try {
  const s = await startServer(binary, model, ["--api-key", KEY, "-c", "2048"]);
  servers.push(s);
  await run(s);
} catch (e) {
  check(false, "exception: " + (e && e.stack || e));
} finally {
  for (const s of servers) await stopServer(s, t, "server");
}
process.exit(t.finish());
