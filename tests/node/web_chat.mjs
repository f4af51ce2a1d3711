// speck serve's chat page (tools/web/chat.html) end to end in headless Chromium, driven by
// puppeteer-core: the page loads with the model's name; settings persist across a reload and
// reach the request; an answer streams in (its text grows over several observations); Stop ends
// it and the server logs the request as cancelled; the next question carries the history;
// Shift+Enter is a newline, Enter sends; a server error is shown; New chat clears the history;
// Escape stops an answer;
// code fences render as <pre><code> and HTML in the model's text stays text; with --api-key the
// page asks for the key and sends it; --no-webui turns the page off.
//
// usage: node web_chat.mjs SPECK_BINARY MODEL.gguf     (exit 77: a dependency is missing)
import { existsSync } from "node:fs";
import { Checks, missing, startServer, stopServer, sleep } from "./serve_harness.mjs";

const [binary, model] = process.argv.slice(2);
if (!binary || !model) {
  console.log("usage: node web_chat.mjs SPECK_BINARY MODEL.gguf");
  process.exit(2);
}
if (!existsSync(model)) process.exit(missing(model, "the default model is part of the repository"));
let puppeteer;
try {
  puppeteer = (await import("puppeteer-core")).default;
} catch (e) {
  process.exit(missing("puppeteer-core", "scripts/deps.sh --test installs tests/node's packages"));
}
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(chromium)) {
  process.exit(missing(chromium, "scripts/deps.sh --test installs Debian's chromium (or set CHROMIUM)"));
}

const t = new Checks();
const check = t.check.bind(t);
const CHAT = "/v1/chat/completions";
// The system prompt and the questions: the answer to the first must run past 400 tokens
// (greedy) so that it is still running when Stop reaches the server (3 observations of the
// page, then up to 100 ms until the server notices the closed connection); the first of these
// that does is used.
const SYSTEM = "You write Python.";
const QUESTIONS = ["def parse_args(argv):", "class Config:", "import os\nimport sys\n", "Write a loop."];

async function launch() {
  const args = ["--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"];
  // Chromium's sandbox cannot start as root (containers, CI); elsewhere it stays on.
  if (process.getuid && process.getuid() === 0) args.push("--no-sandbox");
  return puppeteer.launch({ executablePath: chromium, headless: true, args });
}

// A page that records every chat request (body and headers) and reports script errors.
async function openPage(browser, url, sent) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => check(false, "error in the page: " + e.message));
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith(CHAT)) {
      let body = null;
      try { body = JSON.parse(r.postData()); } catch (e) { body = null; }
      sent.push({ body, headers: r.headers() });
    }
  });
  await page.goto(url + "/", { waitUntil: "load" });
  return page;
}

async function setField(page, sel, value) {
  await page.$eval(sel, (e, v) => {
    e.value = v;
    e.dispatchEvent(new Event("input", { bubbles: true }));
    e.dispatchEvent(new Event("change", { bubbles: true }));
  }, value);
}

const msgCount = (page) => page.$$eval("#log .msg", (m) => m.length);
const lastAnswer = (page) => page.$$eval("#log .msg.assistant .content",
  (m) => (m.length ? m[m.length - 1].textContent : ""));
const idle = (page, ms = 30000) =>
  page.waitForFunction(() => !document.getElementById("send").disabled, { timeout: ms });

// Types text into the input and sends it; returns once the page took the question (its message
// is in the log, or an error is shown): pressing Enter only dispatches the key, and an idle()
// right after it could see the page before it turned busy.
async function ask(page, text) {
  const before = await page.$$eval("#log .msg.user", (n) => n.length);
  await page.focus("#input");
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (i) {
      await page.keyboard.down("Shift");
      await page.keyboard.press("Enter");
      await page.keyboard.up("Shift");
    }
    await page.keyboard.type(lines[i]);
  }
  await page.keyboard.press("Enter");
  await page.waitForFunction((b) => document.querySelectorAll("#log .msg.user").length > b ||
                                    !document.getElementById("error").hidden,
                             { timeout: 10000 }, before).catch(() => {});
}

async function direct(url, body) {
  const r = await fetch(url + CHAT, { method: "POST", headers: { "Content-Type": "application/json" },
                                     body: JSON.stringify(body) });
  return r.json();
}

async function mainServer(browser, s) {
  // The page itself: HTML, self-contained (nothing loaded from elsewhere).
  const res = await fetch(s.url + "/index.html");
  const html = await res.text();
  check(res.status === 200 && res.headers.get("content-type").startsWith("text/html"),
    `/index.html: ${res.status} ${res.headers.get("content-type")}`);
  check(!/\b(src|href)\s*=|https?:\/\/|@import/i.test(html), "the page refers to other resources");

  // A question whose greedy answer does not end within 120 tokens.
  let question = null, greedy = "";
  for (const q of QUESTIONS) {
    const b = await direct(s.url, { messages: [{ role: "system", content: SYSTEM },
                                               { role: "user", content: q }],
                                    max_tokens: 400, temperature: 0 });
    if (b.choices && b.choices[0].finish_reason === "length") {
      question = q;
      greedy = b.choices[0].message.content;
      break;
    }
  }
  if (!check(question, "every question's greedy answer ended within 400 tokens")) return;

  const sent = [];
  const page = await openPage(browser, s.url, sent);
  await page.waitForFunction(() => document.getElementById("model").textContent === "default.gguf",
    { timeout: 10000 }).catch(() => {});
  check(await page.$eval("#model", (e) => e.textContent) === "default.gguf", "model name shown");

  // Settings: persisted in localStorage across a reload.
  await page.click("#settings-toggle");
  check(await page.$eval("#settings", (e) => !e.hidden), "settings open");
  check(await page.$eval("#settings-toggle", (e) => e.getAttribute("aria-expanded")) === "true",
    "settings toggle's aria-expanded");
  await setField(page, "#set-system", SYSTEM);
  await setField(page, "#set-temperature", "0");
  await setField(page, "#set-max-tokens", "1500");
  await page.reload({ waitUntil: "load" });
  const kept = await page.evaluate(() => [document.getElementById("set-system").value,
    document.getElementById("set-temperature").value, document.getElementById("set-max-tokens").value]);
  check(JSON.stringify(kept) === JSON.stringify([SYSTEM, "0", "1500"]), `settings after reload: ${kept}`);

  // Streaming, then Stop mid-way.
  await ask(page, question);
  const seen = [];
  const t0 = Date.now();
  let ended = false;
  while (Date.now() - t0 < 30000) {
    const n = (await lastAnswer(page)).length;
    if (n > 0 && (!seen.length || n > seen[seen.length - 1])) seen.push(n);
    if (seen.length >= 3) break;
    if (seen.length && await page.$eval("#stop", (e) => e.disabled)) { ended = true; break; }
    await sleep(5);
  }
  check(!ended && seen.length >= 3, `the answer did not grow over 3 observations: ${seen}`);
  check(await page.$eval("#stop", (e) => !e.disabled), "Stop enabled while answering");
  await page.click("#stop");
  await idle(page);
  const stopped = await lastAnswer(page);
  const notes = await page.$$eval("#log .msg.assistant .note", (n) => n.map((e) => e.textContent));
  check(notes.includes("(stopped)"), `stopped note: ${notes}`);
  const m = await s.waitLog(/POST \/v1\/chat\/completions 200 \S+ prompt=\d+ completion=(\d+) finish=cancelled/);
  check(m && Number(m[1]) < 1500, `the server logged no cancelled request:\n${s.log().slice(-1500)}`);
  check(sent.length === 1, `requests: ${sent.length}`);
  const b0 = sent[0] && sent[0].body;
  check(b0 && b0.stream === true && b0.temperature === 0 && b0.max_tokens === 1500 &&
        b0.model === "default.gguf" && b0.messages.length === 2 &&
        b0.messages[0].role === "system" && b0.messages[0].content === SYSTEM &&
        b0.messages[1].role === "user" && b0.messages[1].content === question,
        `first request: ${JSON.stringify(b0)}`);

  // The next question carries the history, with the stopped answer; Shift+Enter is a newline.
  await setField(page, "#set-max-tokens", "8");
  await ask(page, "line one\nline two");
  await idle(page);
  const b1 = sent[1] && sent[1].body;
  const partial = b1 && b1.messages[2] && b1.messages[2].content;
  check(b1 && b1.max_tokens === 8 && b1.messages.length === 4 && b1.messages[2].role === "assistant" &&
        b1.messages[3].role === "user" && b1.messages[3].content === "line one\nline two",
        `second request: ${JSON.stringify(b1)}`);
  check(typeof partial === "string" && partial.length > 0 &&
        (greedy.startsWith(partial) || partial.startsWith(greedy)),
        `the stopped answer ${JSON.stringify(partial)} is not the greedy one ${JSON.stringify(greedy)}`);
  check(stopped.length > 0, "the stopped answer is shown");
  check(await msgCount(page) === 4, `messages shown: ${await msgCount(page)}`);

  // A server error (prompt + max_tokens over the context: 400) is shown; the question comes back.
  await setField(page, "#set-max-tokens", "100000");
  await ask(page, "too long");
  await idle(page);
  const err = await page.$eval("#error", (e) => (e.hidden ? "" : e.textContent));
  check(/^400\b/.test(err) && /context/.test(err), `error shown: ${JSON.stringify(err)}`);
  check(await page.$eval("#input", (e) => e.value) === "too long", "the failed question is back in the input");
  check(await msgCount(page) === 4, "the failed exchange is not in the conversation");

  // New chat: history cleared.
  await page.$eval("#input", (e) => { e.value = ""; });
  await page.click("#new-chat");
  check(await msgCount(page) === 0, "New chat clears the conversation");
  await setField(page, "#set-max-tokens", "4");
  await ask(page, "fresh");
  await idle(page);
  const b2 = sent[sent.length - 1].body;
  check(b2.messages.length === 2 && b2.messages[1].content === "fresh" && b2.max_tokens === 4,
    `after New chat: ${JSON.stringify(b2)}`);

  // Escape stops an answer too (the keyboard's Stop).
  await setField(page, "#set-max-tokens", "1500");
  await ask(page, question);
  await page.waitForFunction(() => {
    const c = document.querySelectorAll("#log .msg.assistant .content");
    return c.length === 2 && c[1].textContent.length > 0;
  }, { timeout: 30000 }).catch(() => {});
  check(await page.$eval("#stop", (e) => !e.disabled), "still answering before Escape");
  await page.keyboard.press("Escape");
  await idle(page);
  const esc = await page.$$eval("#log .msg.assistant .note", (n) => n.map((e) => e.textContent));
  check(esc.includes("(stopped)"), `Escape: notes ${esc}`);
  const cancels = await s.waitLog(/(finish=cancelled[^]*){2}/);
  check(cancels, "the server logged no second cancelled request");
  await page.click("#new-chat");

  // Rendering, on an answer the test writes (intercepted): a code fence split across chunks
  // becomes <pre><code>; HTML in the text is shown as text and never runs.
  const pieces = ["Here:\n\n``", "`c\nint main(void) {\n", "  return 0;\n}\n```\n",
    "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\"> and `a<b` done"];
  const sse = ["data: " + JSON.stringify({ choices: [{ index: 0, delta: { role: "assistant", content: "" } }] })];
  for (const p of pieces) sse.push("data: " + JSON.stringify({ choices: [{ index: 0, delta: { content: p } }] }));
  sse.push("data: " + JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }));
  sse.push("data: [DONE]");
  let mock = "stream";
  await page.setRequestInterception(true);
  page.on("request", (r) => {
    if (!r.url().endsWith(CHAT)) return r.continue();
    if (mock === "stream") {
      return r.respond({ status: 200, contentType: "text/event-stream", body: sse.join("\n\n") + "\n\n" });
    }
    return r.respond({ status: 503, contentType: "application/json", headers: { "Retry-After": "1" },
      body: JSON.stringify({ error: { message: "the server is busy: the request queue is full",
                                      type: "server_error", code: 503 } }) });
  });
  await ask(page, "show code");
  await idle(page);
  const r = await page.evaluate(() => {
    const msgs = document.querySelectorAll("#log .msg.assistant");
    const last = msgs[msgs.length - 1];
    const code = last.querySelector("pre > code");
    return {
      code: code && code.textContent, lang: code && code.dataset.lang,
      inline: [...last.querySelectorAll("p code")].map((c) => c.textContent),
      text: last.querySelector(".content").textContent,
      elements: [...document.querySelectorAll("#log script, #log img")].length,
      xss: window.__xss,
    };
  });
  check(r.code === "int main(void) {\n  return 0;\n}" && r.lang === "c", `code block: ${JSON.stringify(r)}`);
  check(r.inline.includes("a<b"), `inline code: ${r.inline}`);
  check(r.text.includes("<script>window.__xss = 1</script><img src=x"), "HTML shown as text");
  check(r.elements === 0 && r.xss === undefined, `model text became HTML: ${JSON.stringify(r)}`);
  mock = "busy";
  await ask(page, "again");
  await idle(page);
  const busy = await page.$eval("#error", (e) => (e.hidden ? "" : e.textContent));
  check(/^503\b/.test(busy) && /busy/.test(busy), `503 shown: ${JSON.stringify(busy)}`);
  await page.close();
}

// --api-key: the page loads without the key, asks for it, then sends it.
async function keyServer(browser, s) {
  const sent = [];
  const page = await openPage(browser, s.url, sent);
  await page.waitForFunction(() => !document.getElementById("error").hidden, { timeout: 10000 }).catch(() => {});
  const err = await page.$eval("#error", (e) => e.textContent);
  check(/^401\b/.test(err), `no key: ${JSON.stringify(err)}`);
  check(await page.$eval("#settings", (e) => !e.hidden), "settings open for the key");
  await setField(page, "#set-api-key", "sekret");
  await page.waitForFunction(() => document.getElementById("model").textContent === "default.gguf",
    { timeout: 10000 }).catch(() => {});
  check(await page.$eval("#model", (e) => e.textContent) === "default.gguf", "model name with the key");
  await page.reload({ waitUntil: "load" });
  check(await page.$eval("#set-api-key", (e) => e.value) === "sekret", "key kept across a reload");
  await setField(page, "#set-max-tokens", "4");
  await ask(page, "hello");
  await idle(page);
  const last = sent[sent.length - 1];
  check(last && last.headers.authorization === "Bearer sekret", "the key is sent");
  // This server queues nothing (--queue 0): a real 503.
  const e2 = await page.$eval("#error", (e) => (e.hidden ? "" : e.textContent));
  check(/^503\b/.test(e2), `the server's 503 shown: ${JSON.stringify(e2)}`);
  await page.close();
}

async function main() {
  const servers = [];
  let browser = null;
  try {
    // 5 ms after each pass: the default model writes ~850 tokens/s, so a 1500-token answer could
    // end before a loaded machine's browser presses Stop (it did, under CI-like load); paused, it
    // runs for >= 7.5 s.
    const s = await startServer(binary, model, ["--parallel", "2", "-c", "2048"],
                                { SPECK_SERVE_STEP_DELAY_MS: "5" });
    servers.push(["server", s]);
    const k = await startServer(binary, model, ["--api-key", "sekret", "--queue", "0"]);
    servers.push(["--api-key server", k]);
    const n = await startServer(binary, model, ["--no-webui"]);
    servers.push(["--no-webui server", n]);

    // Without --no-webui the page is public; with it, / is an unknown path.
    const pk = await fetch(k.url + "/");
    check(pk.status === 200, `/ with --api-key: ${pk.status}`);
    const pn = await fetch(n.url + "/");
    const bn = await pn.json().catch(() => null);
    check(pn.status === 404 && bn && bn.error, `/ with --no-webui: ${pn.status}`);

    browser = await launch();
    await mainServer(browser, s);
    await keyServer(browser, k);
  } catch (e) {
    check(false, "exception: " + (e && e.stack || e));
  } finally {
    if (browser) await browser.close();
    for (const [name, s] of servers) await stopServer(s, t, name);
  }
  process.exit(t.finish());
}

await main();
