"""Plain-PyTorch reference forward pass for the decoder architectures speck runs: "llama"
(also Mistral's sliding window and Mixtral's experts), "qwen2", "qwen3", "gemma2", "gemma3",
"phi3", and the mixtures of experts "qwen2moe", "qwen3moe", "olmoe".

This is the accurate, obviously-correct side of speck's forward-pass tests: no KV cache, no
kernels, no fusion; everything in float64 by default so that the reference's own rounding is
negligible next to speck's float32 arithmetic. It follows llama.cpp's conventions for tensor
names, metadata keys and RoPE layouts (gemma's norm weights stored as 1 + w, phi3's fused
attn_qkv and gate/up ffn_up, LongRoPE's rope_factors_* tensors), so a model that llama.cpp and
speck agree on should match this too. The layer structure of each architecture follows its
model definition (Hugging Face transformers' modeling code): Qwen3 / Gemma 3 normalise each q
and k head before RoPE; Gemma scales embeddings by sqrt(n_embd), normalises the attention and
FFN outputs before each residual add, uses GELU's tanh form in GeGLU, scales q . k by
1/sqrt(query_pre_attn_scalar), soft-caps logits as c tanh(x / c), and windows some layers (a
query at position p sees keys at positions > p - window).

Mixtures of experts follow transformers' sparse MoE blocks (MixtralSparseMoeBlock,
Qwen2MoeSparseMoeBlock, Qwen3MoeSparseMoeBlock, OlmoeSparseMoeBlock): router logits = gate(h),
softmax over all experts, the top k by probability, their probabilities renormalised to sum to
1 when the model says so (Mixtral always: its softmax over the top-k logits is the same thing;
Qwen3-MoE by norm_topk_prob, true in the released models; OLMoE and Qwen2-MoE not), each chosen
expert's down(silu(gate h) * up h) summed with those weights, plus (Qwen2-MoE) the shared
expert's output times sigmoid(shared_expert_gate(h)). OLMoE's q_norm / k_norm are RMSNorms over
the whole q and k projections (not per head). In GGUF the experts are stacked 3-D tensors
ffn_{gate,up,down}_exps of shape (n_expert, rows, cols).

The forward is stateless: it takes the whole token list with explicit positions and an (n, n)
boolean attention mask. A KV cache, chunked prefill, truncation and token trees are all just
particular masks/positions, so every speck mode can be checked against this one function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class HParams:
    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    norm_eps: float
    rope_base: float
    rope_neox: bool              # True: rotate (x[i], x[i+d/2]); False: rotate (x[2i], x[2i+1])
    rope_inv_freq: np.ndarray    # (head_dim/2,) float64, all scaling already applied
    rope_pos_scale: float        # positions are multiplied by this (linear scaling: 1/factor)
    # Architecture features (defaults: the Llama layer).
    act: str = "silu"            # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embd_scale: float = 1.0      # token embeddings multiplied by this
    attn_scale: float = 0.0      # q . k multiplier (0: 1/sqrt(head_dim))
    attn_softcap: float = 0.0    # > 0: scores -> c tanh(s / c)
    final_softcap: float = 0.0   # > 0: logits likewise
    window: int = 0              # > 0: sliding window of the windowed layers
    swa_period: int = 0          # llama.cpp's pattern: layer l windowed iff l % P < P - 1 (0: all)
    swa_inv_freq: np.ndarray | None = None   # windowed layers' own frequencies (None: the same)
    swa_pos_scale: float = 1.0
    rope_mscale: float = 1.0     # cos and sin multiplied by this (LongRoPE's attention factor)
    long_inv_freq: np.ndarray | None = None  # LongRoPE: frequencies with the long factors
    n_expert: int = 0            # mixture of experts: experts per layer (0: dense FFN)
    n_expert_used: int = 0       # top-k
    moe_norm: bool = False       # renormalise the top-k probabilities
    qk_norm_full: bool = False   # q/k RMSNorm over the whole projection (OLMoE), not per head

    def layer_windowed(self, il: int) -> bool:
        if self.window <= 0:
            return False
        return self.swa_period == 0 or il % self.swa_period < self.swa_period - 1


def _get(kv: dict, key: str, default=None, required=True):
    if key in kv:
        return kv[key]
    if default is None and required:
        raise KeyError(f"missing metadata key {key!r}")
    return default


def llama3_inv_freq(inv_freq: np.ndarray, factor: float, low: float, high: float,
                    orig_ctx: float) -> np.ndarray:
    """Llama 3.1 frequency scaling: long wavelengths are slowed down by `factor`, short ones
    kept, and the band in between interpolated smoothly in 1/wavelength."""
    out = np.empty_like(inv_freq)
    low_wavelen = orig_ctx / low     # longer than this: fully scaled
    high_wavelen = orig_ctx / high   # shorter than this: untouched
    for i, f in enumerate(inv_freq):
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out[i] = f
        elif wavelen > low_wavelen:
            out[i] = f / factor
        else:
            smooth = (orig_ctx / wavelen - low) / (high - low)
            out[i] = (1 - smooth) * f / factor + smooth * f
    return out


ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "qwen2moe", "qwen3moe", "olmoe")
# Whether each MoE family renormalises its top-k weights (llama.cpp fixes it per family; a file
# may say otherwise with ARCH.expert_weights_norm): Mixtral (llama) and Qwen3-MoE do.
MOE_NORM = {"llama": True, "qwen3moe": True, "qwen2moe": False, "olmoe": False}


def hparams_from_gguf(kv: dict, tensors: dict) -> HParams:
    arch = kv["general.architecture"]
    if arch not in ARCHS:
        raise ValueError(f"unsupported architecture {arch!r}")
    a = arch + "."
    n_embd = int(_get(kv, a + "embedding_length"))
    n_head = int(_get(kv, a + "attention.head_count"))
    head_dim = int(_get(kv, a + "attention.key_length", n_embd // n_head))
    base = float(_get(kv, a + "rope.freq_base", 10000.0))
    half = head_dim // 2
    inv_freq = base ** (-2.0 * np.arange(half, dtype=np.float64) / head_dim)

    pos_scale = 1.0
    long_inv = None
    scaling = _get(kv, a + "rope.scaling.type", required=False)
    factor = float(_get(kv, a + "rope.scaling.factor", 1.0, required=False))
    if "rope_factors_long.weight" in tensors:
        # LongRoPE (Phi-3 128k): frequencies divided by per-pair factors, the short ones for a
        # context within the original one and the long ones beyond (chosen by the caller).
        short = np.asarray(tensors["rope_factors_short.weight"], dtype=np.float64).reshape(-1)
        lng = np.asarray(tensors["rope_factors_long.weight"], dtype=np.float64).reshape(-1)
        inv_freq, long_inv = inv_freq / short, inv_freq / lng
    elif "rope_freqs.weight" in tensors:
        # How llama.cpp actually ships Llama 3.1 scaling: per-frequency divisors precomputed by
        # the converter. It takes precedence over any scaling keys.
        ff = np.asarray(tensors["rope_freqs.weight"], dtype=np.float64).reshape(-1)
        if ff.size != half:
            raise ValueError(f"rope_freqs.weight has {ff.size} entries, expected {half}")
        inv_freq = inv_freq / ff
    elif scaling == "llama3":
        inv_freq = llama3_inv_freq(
            inv_freq, factor,
            float(_get(kv, a + "rope.scaling.low_freq_factor")),
            float(_get(kv, a + "rope.scaling.high_freq_factor")),
            float(_get(kv, a + "rope.scaling.original_context_length")))
    elif scaling == "linear":
        pos_scale = 1.0 / factor
    elif scaling not in (None, "none"):
        raise ValueError(f"unsupported rope scaling {scaling!r}")

    hp = HParams(
        arch=arch,
        n_vocab=int(tensors["token_embd.weight"].shape[0]),
        n_ctx_train=int(_get(kv, a + "context_length")),
        n_embd=n_embd,
        n_layer=int(_get(kv, a + "block_count")),
        n_head=n_head,
        n_head_kv=int(_get(kv, a + "attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(_get(kv, a + "feed_forward_length")),
        norm_eps=float(_get(kv, a + "attention.layer_norm_rms_epsilon")),
        rope_base=base,
        # llama.cpp: LLM_ARCH_LLAMA uses LLAMA_ROPE_TYPE_NORM, the others here NEOX.
        rope_neox=(arch != "llama"),
        rope_inv_freq=inv_freq,
        rope_pos_scale=pos_scale,
    )
    hp.long_inv_freq = long_inv
    hp.rope_mscale = float(_get(kv, a + "rope.scaling.attn_factor", 1.0, required=False))
    hp.n_expert = int(_get(kv, a + "expert_count", 0, required=False))
    if hp.n_expert:
        hp.n_expert_used = int(_get(kv, a + "expert_used_count"))
        hp.moe_norm = bool(_get(kv, a + "expert_weights_norm", MOE_NORM[arch], required=False))
    hp.qk_norm_full = arch == "olmoe"
    gemma = arch in ("gemma2", "gemma3")
    if gemma:
        hp.act = "gelu_tanh"
        hp.embd_scale = math.sqrt(n_embd)
        # query_pre_attn_scalar: n_embd / n_head for the 27B models (46 / 62 layers), else the
        # head size -- what llama.cpp assumes without an attention.scale key.
        big = hp.n_layer == (46 if arch == "gemma2" else 62)
        hp.attn_scale = 1.0 / math.sqrt(n_embd // n_head if big else head_dim)
    hp.attn_scale = float(_get(kv, a + "attention.scale", hp.attn_scale, required=False))
    if hp.attn_scale == 0.0:
        hp.attn_scale = 1.0 / math.sqrt(head_dim)
    if arch == "gemma2":
        hp.attn_softcap = float(_get(kv, a + "attn_logit_softcapping", 50.0, required=False))
        hp.final_softcap = float(_get(kv, a + "final_logit_softcapping", 30.0, required=False))
    elif arch == "gemma3":
        hp.final_softcap = float(_get(kv, a + "final_logit_softcapping", 0.0, required=False))
    if arch in ("llama", "gemma2", "gemma3", "phi3"):
        default_window = 4096 if arch == "gemma2" else 0
        hp.window = int(_get(kv, a + "attention.sliding_window", default_window, required=False))
        hp.swa_period = int(_get(kv, a + "attention.sliding_window_pattern",
                                 {"gemma2": 2, "gemma3": 6}.get(arch, 0), required=False))
        if arch == "phi3" and hp.window >= hp.n_ctx_train:
            hp.window = 0  # Phi-3 128k files say 262144: no window
    if arch == "gemma3":
        # Windowed layers: their own base (rope_local_base_freq), no scaling.
        b = float(_get(kv, a + "rope.freq_base_swa", 10000.0, required=False))
        hp.swa_inv_freq = b ** (-2.0 * np.arange(half, dtype=np.float64) / head_dim)
    elif gemma and a + "rope.freq_base_swa" in kv:
        # Gemma 2: windowed layers share the global layers' RoPE unless the file gives them a
        # base of their own (then with the same scaling).
        b = float(kv[a + "rope.freq_base_swa"])
        hp.swa_inv_freq = b ** (-2.0 * np.arange(half, dtype=np.float64) / head_dim)
        hp.swa_pos_scale = pos_scale
    return hp


class LlamaRef:
    """Weights as float64 torch tensors plus hyper-parameters; call forward()."""

    def __init__(self, kv: dict, tensors: dict, dtype=torch.float64, q8_inputs=()):
        """q8_inputs: weight names (e.g. "blk.0.ffn_up") whose matmul inputs are rounded
        through Q8_0 first, emulating engines that quantize activations on the fly for
        quantized weights (ggml's vec_dot_type). Used only to size test tolerances."""
        self.hp = hparams_from_gguf(kv, tensors)
        self.dtype = dtype
        # Round cached keys and values to f16 (as a speck context with an f16 KV cache stores
        # them); set after construction.
        self.kv_f16 = False
        # Or round them through Q8_0 / Q4_0 blocks along each head's row ("q8_0", "q4_0"), with
        # quant_ref.py's quantizer (ggml's rules); set after construction.
        self.kv_quant = None
        self.q8_inputs = set(q8_inputs)
        # LongRoPE: the long factors (speck and llama.cpp use them in a context longer than the
        # original one); set after construction.
        self.long_rope = False
        # SCMoE's weak activation (rank-k routing, Shi et al. 2024): > 0 runs only the expert the
        # router ranks weak_rank-th (1 = the most probable) for every token; set after
        # construction.
        self.weak_rank = 0
        self.w = {k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in tensors.items()}
        if "output.weight" not in self.w:  # tied output head
            self.w["output.weight"] = self.w["token_embd.weight"]
        hp = self.hp
        Q, KV, F = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_ff
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            # Fused q/k/v (attn_qkv: q rows, then k, then v) and Phi-3's gate/up (ffn_up of
            # 2 n_ff rows: gate first) split into the separate tensors.
            for kind in ("weight", "bias"):
                fused = self.w.pop(p + "attn_qkv." + kind, None)
                if fused is not None:
                    q, k, v = torch.split(fused, [Q, KV, KV], dim=0)
                    self.w[p + "attn_q." + kind] = q
                    self.w[p + "attn_k." + kind] = k
                    self.w[p + "attn_v." + kind] = v
            up = self.w.get(p + "ffn_up.weight")
            if up is not None and p + "ffn_gate.weight" not in self.w and up.shape[0] == 2 * F:
                self.w[p + "ffn_gate.weight"], self.w[p + "ffn_up.weight"] = up[:F], up[F:]

    @classmethod
    def from_file(cls, path: str, dtype=torch.float64) -> "LlamaRef":
        from gguf_io import read_gguf
        g = read_gguf(path)
        return cls(g.kv, g.tensors, dtype)

    # ---- building blocks --------------------------------------------------------------------

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.hp.norm_eps) * w

    def rope_freqs(self, il: int) -> tuple[np.ndarray, float]:
        """Layer il's frequencies and position scale: a windowed layer's own (Gemma 3), else the
        model's (LongRoPE's long ones when long_rope)."""
        hp = self.hp
        if hp.layer_windowed(il) and hp.swa_inv_freq is not None:
            return hp.swa_inv_freq, hp.swa_pos_scale
        if self.long_rope and hp.long_inv_freq is not None:
            return hp.long_inv_freq, hp.rope_pos_scale
        return hp.rope_inv_freq, hp.rope_pos_scale

    def rope(self, x: torch.Tensor, pos: torch.Tensor, il: int = 0) -> torch.Tensor:
        """x: (n, heads, head_dim); pos: (n,). Rotation by angle pos * inv_freq[i] of pair i,
        cos and sin scaled by the LongRoPE attention factor (1 otherwise)."""
        hp = self.hp
        inv_np, pos_scale = self.rope_freqs(il)
        inv = torch.from_numpy(inv_np).to(self.dtype)
        ang = (pos.to(self.dtype) * pos_scale)[:, None] * inv[None, :]  # (n, d/2)
        cos = torch.cos(ang)[:, None, :] * hp.rope_mscale
        sin = torch.sin(ang)[:, None, :] * hp.rope_mscale
        if hp.rope_neox:
            a, b = x[..., : hp.head_dim // 2], x[..., hp.head_dim // 2:]
            return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if name in self.q8_inputs:
            x = q8_0_roundtrip(x)
        y = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return y + bias if bias is not None else y

    def moe(self, h: torch.Tensor, p: str) -> torch.Tensor:
        """The sparse MoE block of transformers' Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE models
        on h (n, n_embd): route, run the chosen experts, sum weighted (+ the shared expert)."""
        hp, w = self.hp, self.w
        logits = self.linear(h, p + "ffn_gate_inp")                      # (n, n_expert)
        probs = torch.softmax(logits, dim=-1)
        top_w, top_i = torch.topk(probs, hp.n_expert_used, dim=-1)       # (n, k)
        if self.weak_rank:  # the rank-r expert alone, the family's rule normalising its weight
            srt_w, srt_i = torch.sort(probs, dim=-1, descending=True, stable=True)
            top_w = srt_w[:, self.weak_rank - 1:self.weak_rank]
            top_i = srt_i[:, self.weak_rank - 1:self.weak_rank]
        if hp.moe_norm:
            top_w = top_w / top_w.sum(-1, keepdim=True)
        if hp.n_expert_used < hp.n_expert:  # the gap between the k-th and (k+1)-th logit
            srt = logits.sort(-1, descending=True).values
            self.last_margins.append(srt[:, hp.n_expert_used - 1] - srt[:, hp.n_expert_used])
        else:
            self.last_margins.append(torch.full((h.shape[0],), math.inf, dtype=h.dtype))
        out = torch.zeros_like(h)
        gate, up, down = (w[p + f"ffn_{t}_exps.weight"] for t in ("gate", "up", "down"))
        for e in range(hp.n_expert):
            rows, slot = torch.nonzero(top_i == e, as_tuple=True)
            if rows.numel() == 0:
                continue
            x = h[rows]
            y = (torch.nn.functional.silu(x @ gate[e].T) * (x @ up[e].T)) @ down[e].T
            out.index_add_(0, rows, y * top_w[rows, slot][:, None])
        if p + "ffn_gate_inp_shexp.weight" in w:  # Qwen2-MoE's shared expert
            g = torch.sigmoid(h @ w[p + "ffn_gate_inp_shexp.weight"].reshape(-1))[:, None]
            y = self.linear(torch.nn.functional.silu(self.linear(h, p + "ffn_gate_shexp"))
                            * self.linear(h, p + "ffn_up_shexp"), p + "ffn_down_shexp")
            out = out + g * y
        return out

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, tokens, positions=None, mask=None) -> torch.Tensor:
        """Logits (n, n_vocab) for every row.

        tokens:    n token ids
        positions: n RoPE positions (default 0..n-1)
        mask:      (n, n) bool, mask[i, j] = row i may attend to row j (default causal)
        """
        hp = self.hp
        # MoE: per layer, each row's gap between its k-th and (k+1)-th router logit (how close
        # its routing is to a tie), for tests that must know.
        self.last_margins = []
        tok = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        n = tok.shape[0]
        pos = torch.arange(n) if positions is None else torch.as_tensor(np.asarray(positions))
        if mask is None:
            mask = torch.ones(n, n, dtype=torch.bool).tril()
        mask = torch.as_tensor(np.asarray(mask, dtype=bool))
        if mask.shape != (n, n):
            raise ValueError(f"mask shape {tuple(mask.shape)} != ({n}, {n})")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a row of the mask attends to nothing")

        group = hp.n_head // hp.n_head_kv
        w = self.w
        # Windowed layers: query i sees key j only when pos_i - pos_j < window as well.
        posd = pos.to(torch.int64)
        win_mask = mask & ((posd[:, None] - posd[None, :]) < max(hp.window, 1))
        x = w["token_embd.weight"][tok] * hp.embd_scale  # (n, n_embd)
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            h = self.rms_norm(x, w[p + "attn_norm.weight"])
            q = self.linear(h, p + "attn_q")
            k = self.linear(h, p + "attn_k")
            if hp.qk_norm_full:  # OLMoE: RMSNorm over the whole q / k projection
                q = self.rms_norm(q, w[p + "attn_q_norm.weight"])
                k = self.rms_norm(k, w[p + "attn_k_norm.weight"])
            q = q.view(n, hp.n_head, hp.head_dim)
            k = k.view(n, hp.n_head_kv, hp.head_dim)
            v = self.linear(h, p + "attn_v").view(n, hp.n_head_kv, hp.head_dim)
            if p + "attn_q_norm.weight" in w and not hp.qk_norm_full:  # RMSNorm over each head
                q = self.rms_norm(q, w[p + "attn_q_norm.weight"])
                k = self.rms_norm(k, w[p + "attn_k_norm.weight"])
            q, k = self.rope(q, pos, il), self.rope(k, pos, il)
            if self.kv_f16:
                k, v = k.half().to(self.dtype), v.half().to(self.dtype)
            if self.kv_quant:
                k, v = kv_block_roundtrip(k, self.kv_quant), kv_block_roundtrip(v, self.kv_quant)
            # GQA: query head hq reads kv head hq // group (consecutive query heads share one).
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            scores = torch.einsum("ihd,jhd->hij", q, k) * hp.attn_scale
            if hp.attn_softcap > 0:
                scores = hp.attn_softcap * torch.tanh(scores / hp.attn_softcap)
            m = win_mask if hp.layer_windowed(il) else mask
            scores = scores.masked_fill(~m[None], float("-inf"))
            attn = torch.softmax(scores, dim=-1)
            o = torch.einsum("hij,jhd->ihd", attn, v).reshape(n, hp.n_head * hp.head_dim)
            o = self.linear(o, p + "attn_output")
            if p + "post_attention_norm.weight" in w:  # Gemma: the output normalised first
                o = self.rms_norm(o, w[p + "post_attention_norm.weight"])
            x = x + o

            h = self.rms_norm(x, w[p + "ffn_norm.weight"])
            if hp.n_expert:
                x = x + self.moe(h, p)
                continue
            g = self.linear(h, p + "ffn_gate")
            u = self.linear(h, p + "ffn_up")
            if hp.act == "gelu_tanh":
                a = torch.nn.functional.gelu(g, approximate="tanh")
            else:
                a = torch.nn.functional.silu(g)
            o = self.linear(a * u, p + "ffn_down")
            if p + "post_ffw_norm.weight" in w:
                o = self.rms_norm(o, w[p + "post_ffw_norm.weight"])
            x = x + o

        x = self.rms_norm(x, w["output_norm.weight"])
        logits = self.linear(x, "output")
        if hp.final_softcap > 0:
            logits = hp.final_softcap * torch.tanh(logits / hp.final_softcap)
        return logits


def kv_block_roundtrip(x: torch.Tensor, name: str) -> torch.Tensor:
    """x (n, heads, head_dim) as a block KV cache stores it: each head's row, as float32, quantized
    to `name` ("q8_0" / "q4_0") by quant_ref.py's numpy quantizer, and dequantized."""
    import quant_ref
    a = x.detach().to(torch.float32).numpy()
    y = quant_ref.dequantize(name, quant_ref.quantize(name, a)).reshape(a.shape)
    return torch.from_numpy(y).to(x.dtype)


def q8_0_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """x rounded through Q8_0 along its last dimension (blocks of 32, fp16 scale)."""
    b = x.reshape(*x.shape[:-1], -1, 32).to(torch.float32)
    d = b.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    v = b * inv
    q = torch.trunc(v + torch.copysign(torch.full_like(v, 0.5), v))  # C roundf
    y = d.to(torch.float16).to(torch.float32) * q
    return y.reshape(x.shape).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Helpers that turn speck's cache-based modes into (tokens, positions, mask) for forward()
# --------------------------------------------------------------------------------------------

def tree_layout(n_prefix: int, parents: list[int]):
    """Positions and (n, n) mask of a prefix followed by a token tree in one sequence.

    parents[i] is the index (among the tree tokens) of node i's parent, or -1 for a root,
    i.e. a child of the last prefix token. Parents must precede children. A tree node sees the
    whole prefix, its ancestors and itself, at position n_prefix + depth.
    """
    m = len(parents)
    n = n_prefix + m
    mask = np.tril(np.ones((n, n), dtype=bool))
    mask[n_prefix:, n_prefix:] = False
    pos = np.arange(n)
    depth = [0] * m
    for i, par in enumerate(parents):
        if not (-1 <= par < i):
            raise ValueError(f"tree node {i} has invalid parent {par}")
        depth[i] = 0 if par < 0 else depth[par] + 1
        pos[n_prefix + i] = n_prefix + depth[i]
        j = i
        while j >= 0:  # walk up to the root, marking every ancestor visible
            mask[n_prefix + i, n_prefix + j] = True
            j = parents[j]
    return pos, mask


def tree_paths(parents: list[int]) -> list[list[int]]:
    """Root-to-node path (tree indices) for each node."""
    paths = []
    for i in range(len(parents)):
        path, j = [], i
        while j >= 0:
            path.append(j)
            j = parents[j]
        paths.append(path[::-1])
    return paths


def routing_margins(ref: LlamaRef, first_layer: int = 0) -> np.ndarray | None:
    """After ref.forward: each row's smallest router-logit gap between its k-th and (k+1)-th
    expert over layers first_layer.. (None for a dense model)."""
    if not ref.hp.n_expert:
        return None
    return torch.stack(ref.last_margins[first_layer:]).min(0).values.numpy()
