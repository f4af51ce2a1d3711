// transformers.js (@lenml/tokenizers) encode throughput on the same text as bench_tokenizer.c.
// Usage (from tests/node, where node_modules lives):
//   node ../../bench/bench_tokenizer.mjs TEXT_FILE llama3 llama2 ...
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const [file, ...models] = process.argv.slice(2);
const text = readFileSync(file, "utf8");
const lines = text.split(/(?<=\n)/);
const bytes = Buffer.byteLength(text, "utf8");
const require = createRequire(pathToFileURL(process.cwd() + "/"));
for (const m of models) {
  const t0 = performance.now();
  const mod = await import(pathToFileURL(require.resolve(`@lenml/tokenizer-${m}`)).href);
  const tok = mod.fromPreTrained();
  const tl = performance.now() - t0;
  for (let pass = 0; pass < 2; pass++) {
    const t1 = performance.now();
    let n = 0;
    for (const l of lines) n += tok.encode(l, { add_special_tokens: false }).length;
    const s = (performance.now() - t1) / 1000;
    console.log(`${m}: load ${tl.toFixed(0)} ms; encode pass ${pass}: ${n} tokens, ${s.toFixed(2)} s, ${(bytes / s / 1e6).toFixed(2)} MB/s`);
  }
}
