// Deterministic tokenizer test corpus (JSON array of strings) for comparing speck with
// transformers.js. Usage: node make_corpus.mjs OUT.json [N]
// Every string is valid UTF-8 (JSON and JS strings cannot carry invalid bytes); the C test
// covers invalid UTF-8 separately by round-tripping byte strings it makes itself. No NUL
// characters: the C side reads the strings as NUL-terminated (cJSON).
import { writeFileSync } from "node:fs";

const out = process.argv[2] ?? "corpus.json";
const N = Number(process.argv[3] ?? 2400);
let seed = 0x5eed1234;
const rnd = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 4294967296);
const pick = (a) => a[Math.floor(rnd() * a.length)];
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));

const english = `the quick brown fox jumps over lazy dog I you we they it's don't won't can't
I'm you're we've they'll he'd She's HELLO World Tokenization tokenizer LLaMA GPT naïve café
résumé coöperate Don't WON'T it'S information international antidisestablishmentarianism
running ran runs model weights quantization inference throughput latency memory bandwidth
a an of to in for on with as by at from is are was were be been being have has had do does
did say says said make makes made go goes went know knows knew think thinks thought`.split(/\s+/);
const scripts = {
  zh: "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从",
  ja: "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテトー漢字日本語東京",
  ko: "가나다라마바사아자차카타파하한국어서울대학교사랑합니다안녕하세요감사합니다",
  ar: "مرحبابالعالمالعربيةاللغةكتابقلمبيتمدرسةسلام",
  hi: "नमस्तेदुनियाहिन्दीभाषाभारतकिताबपानीघरस्कूल",
  ru: "приветмирРусскийязыкМоскваКнигаДомШколаЁжик",
  el: "ΓειάσουκόσμεΕλληνικάγλώσσαβιβλίο",
  th: "สวัสดีชาวโลกภาษาไทยหนังสือ",
  he: "שלוםעולםעבריתספרבית",
};
const splitChars = (s) => Array.from(s);
const word = (sc) => { const c = splitChars(scripts[sc]); let w = ""; for (let i = int(1, 6); i > 0; i--) w += pick(c); return w; };
const emoji = ["😀", "🦙", "🚀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸", "🇯🇵", "1️⃣", "❤️", "🧑🏿‍💻", "👩‍❤️‍💋‍👨", "✨", "🤖", "🙏🏻"];
const specials = ["<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
  "<|start_header_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>",
  "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unused0>", "<mask>",
  "<|im_st", "<|reserved_special_token_5|>", "<tool_call>", "[multimodal]", "<0x41>"];
const code = [
  "int main(int argc, char **argv) {\n    printf(\"hello %d\\n\", argc);\n    return 0;\n}\n",
  "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\nprint([fib(i) for i in range(10)])\n",
  "const add = (a, b) => a + b;\nexport default function App() {\n  return <div className=\"x\">{add(1, 2)}</div>;\n}\n",
  "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
  "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
  "<html>\n  <body>\n    <h1 id='t'>Title</h1>\n    <p>Text &amp; more</p>\n  </body>\n</html>",
  "{\"key\": [1, 2.5, -3e10, null, true], \"nested\": {\"a\": \"b\"}}",
  "#!/bin/bash\nfor f in *.txt; do\n  echo \"$f\" | sed -e 's/a/b/g' >> out.log 2>&1\ndone\n",
  "x = np.zeros((3, 4), dtype=np.float32)  # comment\r\ny = x @ x.T\r\n",
  "template <typename T>\nstd::vector<T> f(const std::map<std::string, T>& m) { return {}; }",
];
const ws = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "\u00a0", "\u3000", "\u2009", "    ", "\n   \n", "\v", "\f"];
const numbers = () => pick([String(int(0, 9)), String(int(0, 999999999)), `${int(0, 99)}.${int(0, 9999)}`,
  `${int(1900, 2100)}-${int(1, 12)}-${int(1, 28)}`, "3.14159265358979323846", "1,234,567.89", "+1 (555) 123-4567",
  "٠١٢٣٤٥٦٧٨٩", "१२३४", "①②③", "Ⅻ", "0x7fffffff", "1e-10"]);
// Decomposed and precomposed accents (exercise NFC), Hangul jamo, combining sequences.
const combining = ["e\u0301", "a\u0308", "n\u0303", "A\u030a", "\u1100\u1161\u11a8", "o\u0308\u0304",
  "Vi\u1ec7t Nam", "Vie\u0323\u0302t", "\u0915\u093c", "s\u0323\u0307", "\u212b", "\u2126", "\u00c5", "q\u0307\u0323"];
const randUnicode = () => {
  let s = "";
  for (let i = int(1, 12); i > 0; i--) {
    const ranges = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x6ff], [0x900, 0x97f],
      [0x3040, 0x30ff], [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0x1f300, 0x1faff], [0x2000, 0x206f], [0x10000, 0x1007f], [0x300, 0x36f]];
    const [lo, hi] = pick(ranges);
    s += String.fromCodePoint(int(lo, hi));
  }
  return s;
};
const piece = () => {
  const r = rnd();
  if (r < 0.30) return (rnd() < 0.5 ? " " : "") + pick(english);
  if (r < 0.45) return (rnd() < 0.5 ? " " : "") + word(pick(Object.keys(scripts)));
  if (r < 0.53) return pick(ws);
  if (r < 0.60) return (rnd() < 0.5 ? " " : "") + numbers();
  if (r < 0.66) return pick(emoji);
  if (r < 0.72) return pick(".,;:!?()[]{}'\"-_/\\@#$%^&*+=<>|`~…—–«»“”‘’".split(""));
  if (r < 0.76) return pick(specials);
  if (r < 0.82) return pick(combining);
  if (r < 0.88) return randUnicode();
  return (rnd() < 0.5 ? " " : "") + pick(english).toUpperCase();
};

const corpus = [];
// Fixed edge cases first.
corpus.push("", " ", "  ", "\n", "\t", "a", "Hello world", " Hello world", "Hello World!", "   leading", "trailing   ",
  "a".repeat(1000), "ab".repeat(700), "x".repeat(5000), "🦙".repeat(200), "\n".repeat(50), " ".repeat(100),
  "1234567890".repeat(30), "https://example.com/a/b?c=d&e=f#g_h-i.j~k%20l", "QmFzZTY0IGVuY29kZWQgc3RyaW5nIQ==".repeat(10),
  "Supercalifragilisticexpialidocious" + "pneumonoultramicroscopicsilicovolcanoconiosis".repeat(5),
  "<s>Hello</s>", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
  "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>", "<start_of_turn>user\nhi<end_of_turn>",
  "text<|endoftext|>more", "<think>reasoning</think>answer", "<<s>>", "</s></s>", "<unk>", "▁already▁meta▁spaces", "▁",
  "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D", "Don't you think I'M RIGHT'LL", "nul-free \u0001ctl\u007f\u001b[0m",
  "\ufeffBOM", "\u200b\u200c\u200d\u2060", "\ud83d\ude00 surrogate pair emoji", "A\u030a vs \u00c5 vs \u212b");
for (const c of code) corpus.push(c);
while (corpus.length < N) {
  const kind = rnd();
  let s = "";
  if (kind < 0.15) s = pick(code) + (rnd() < 0.5 ? pick(code) : "");
  else if (kind < 0.20) s = pick(english).repeat(int(2, 60));
  else {
    for (let i = int(1, 40); i > 0; i--) s += piece();
  }
  corpus.push(s);
}
writeFileSync(out, JSON.stringify(corpus));
console.log(`wrote ${corpus.length} strings to ${out}`);
