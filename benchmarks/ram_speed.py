"""End-to-end speed of RAM against the same backbone reading the full context.

Per context size, both arms run on random token ids with a randomly initialised model of the chosen
shape (valid for timing: the cost does not depend on the weights), greedy-decoding exactly
``--new-tokens`` tokens:

* full: ``generate(input_ids=context + prompt)``;
* RAM: parallel encoding of the segments and the query (first ``--encoder-layers`` layers), top
  ``--keep-ratio`` of segments as token embeddings, the rest as one aligned vector each, then
  ``generate(inputs_embeds=memory + prompt)``.

Reported: encode, prefill (to the first token), decode, end-to-end milliseconds, the speedup, and the
peak GPU memory of each arm (CUDA only; on CPU the KV-cache size is given instead).

    python benchmarks/ram_speed.py --device cuda --model-size 4b-shape --sizes 4096,16384,32768
    python benchmarks/ram_speed.py --device cpu --model-size smol --sizes 1024,2048,4096
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pocsdk.compressors.ram.config import RAMConfig
from pocsdk.compressors.ram.model import RAMModel

SHAPES: dict[str, dict[str, Any]] = {
    # a few layers, narrow: proves the script in seconds
    "tiny": dict(arch="llama", vocab_size=32000, hidden_size=128, intermediate_size=384, num_hidden_layers=12,
                 num_attention_heads=4, num_key_value_heads=2),
    # SmolLM2-135M (Llama)
    "smol": dict(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    # Qwen3-4B, the official RAM backbone
    "4b-shape": dict(arch="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     tie_word_embeddings=True),
}


@dataclass
class Row:
    arm: str
    context_tokens: int
    decoder_tokens: int
    encode_ms: float
    prefill_ms: float
    decode_ms: float
    total_ms: float
    new_tokens: int
    peak_mem_mb: float | None
    kv_cache_mb: float
    speedup: float | None = None


class _Clock:
    """Streamer noting the arrival of the first generated token (the end of prefill)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._prompt = False

    def put(self, value: Any) -> None:
        if not self._prompt:
            self._prompt = True
        elif self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        """Nothing to flush."""


class _Tok:
    """Just enough tokenizer for RAMModel on random ids."""

    pad_token_id = 0
    eos_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [(ord(c) % 200) + 2 for c in text]}


def build(shape: str, device: str, dtype: torch.dtype, max_pos: int) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    cls = {"llama": LlamaConfig, "qwen3": Qwen3Config}[arch]
    cfg = cls(**spec, max_position_embeddings=max_pos, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def kv_mb(model: Any, tokens: int, dtype: torch.dtype) -> float:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_tok = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8
    return per_tok * tokens / 2**20


def run_full(model: Any, ids: list[int], prompt: list[int], new: int, device: str, dtype: torch.dtype) -> Row:
    _reset_peak(device)
    x = torch.tensor([ids + prompt], device=device)
    clock = _Clock()
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, streamer=clock)
    _sync(device)
    t1 = time.perf_counter()
    first = clock.first or t1
    n = x.shape[1]
    return Row("full", len(ids), n, 0.0, (first - t0) * 1e3, (t1 - first) * 1e3, (t1 - t0) * 1e3,
               int(out.shape[1] - n), _peak(device), kv_mb(model, n + new, dtype))


def run_ram(ram: RAMModel, ids: list[int], query: list[int], prompt: list[int], rho: float, new: int,
            device: str, dtype: torch.dtype) -> Row:
    w = ram.segment_tokens
    segs = [ids[i: i + w] for i in range(0, len(ids), w)]
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        enc = ram.encode(segs, query)
        skim = ram.aligned(enc.skim)
        k = int(rho * len(segs))
        keep = torch.zeros(len(segs), dtype=torch.bool)
        keep[torch.topk(enc.relevance.cpu(), k).indices] = True
        embeds, mask = ram.assemble(segs, keep.tolist(), skim, prompt)
    _sync(device)
    t1 = time.perf_counter()
    clock = _Clock()
    with torch.inference_mode():
        out = ram.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new,
                                   min_new_tokens=new, do_sample=False, pad_token_id=0, streamer=clock)
    _sync(device)
    t2 = time.perf_counter()
    first = clock.first or t2
    n = embeds.shape[1]
    return Row("ram", len(ids), n, (t1 - t0) * 1e3, (first - t1) * 1e3, (t2 - first) * 1e3, (t2 - t0) * 1e3,
               int(out.shape[1]), _peak(device), kv_mb(ram.decoder, n + new, dtype))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--sizes", default="4096,16384,32768", help="context sizes in tokens, comma-separated")
    ap.add_argument("--model-size", default="4b-shape", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16")
    ap.add_argument("--encoder-layers", type=int, default=8)
    ap.add_argument("--segment-tokens", type=int, default=32)
    ap.add_argument("--keep-ratio", type=float, default=0.125, help="close-reading fraction rho")
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--query-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per arm and size (the best is kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = (torch.bfloat16 if device.startswith("cuda") else torch.float32) if args.dtype == "auto" \
        else getattr(torch, args.dtype)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    decoder = build(args.model_size, device, dtype, max(sizes) + args.query_tokens + args.new_tokens + 64)
    layers = min(args.encoder_layers, decoder.config.num_hidden_layers)
    ram = RAMModel(decoder, _Tok(), RAMConfig(encoder_layers=layers, segment_tokens=args.segment_tokens))
    gen = torch.Generator().manual_seed(0)
    vocab = decoder.config.vocab_size
    prompt = ram.prompt_ids("q" * args.query_tokens)
    query = torch.randint(2, vocab, (args.query_tokens,), generator=gen).tolist()
    # warm-up (kernels, allocator) on a short input
    warm = torch.randint(2, vocab, (min(sizes[0], 512),), generator=gen).tolist()
    run_full(decoder, warm, prompt, 4, device, dtype)
    run_ram(ram, warm, query, prompt, args.keep_ratio, 4, device, dtype)

    rows: list[Row] = []
    for n in sizes:
        ids = torch.randint(2, vocab, (n,), generator=gen).tolist()
        full = min((run_full(decoder, ids, prompt, args.new_tokens, device, dtype) for _ in range(args.repeats)),
                   key=lambda r: r.total_ms)
        fast = min((run_ram(ram, ids, query, prompt, args.keep_ratio, args.new_tokens, device, dtype)
                    for _ in range(args.repeats)), key=lambda r: r.total_ms)
        fast.speedup = full.total_ms / fast.total_ms
        rows += [full, fast]
        print(f"{n} tokens: full {full.total_ms:.0f} ms, RAM {fast.total_ms:.0f} ms ({fast.speedup:.2f}x)", flush=True)

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    print(f"\nmodel shape {args.model_size} ({sum(p.numel() for p in decoder.parameters()) / 1e6:.0f}M params), "
          f"{device} ({gpu}), {dtype}, threads {torch.get_num_threads()}; encoder layers {layers}, "
          f"w={args.segment_tokens}, rho={args.keep_ratio}, {args.new_tokens} new tokens\n")
    print("| context | arm | decoder tokens | encode ms | prefill ms | decode ms | end-to-end ms | speedup "
          "| peak GPU MiB | KV cache MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "n/a"
        sp = f"{r.speedup:.2f}x" if r.speedup is not None else ""
        print(f"| {r.context_tokens} | {r.arm} | {r.decoder_tokens} | {r.encode_ms:.0f} | {r.prefill_ms:.0f} | "
              f"{r.decode_ms:.0f} | {r.total_ms:.0f} | {sp} | {peak} | {r.kv_cache_mb:.1f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "device": device, "rows": [asdict(r) for r in rows]}, fh, indent=2)


if __name__ == "__main__":
    main()
