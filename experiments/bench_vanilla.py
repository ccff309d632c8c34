"""Vanilla tokens/s and peak memory of full-size random-weight LLaDA-8B, Dream-7B, LLaDA-MoE and LLaDA2.0-mini.

The checkpoint configs are the official ones (sizes and special ids from the specs), so
no weights are needed. Default setting: prompt 512, gen 256, steps 256, block 32, batch 1,
bf16. ``--smoke`` runs the same code on the tiny fixture configs on CPU.

    python experiments/bench_vanilla.py --device cuda --out results/bench/vanilla_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from dllm_accel import generate, load_model
from dllm_accel.paths import REPO_ROOT, tiny_checkpoint

FULL_SIZE = {
    "llada_8b": {
        "base": "llada",
        "d_model": 4096,
        "n_layers": 32,
        "n_heads": 32,
        "n_kv_heads": 32,
        "mlp_hidden_size": 12288,
        "vocab_size": 126464,
        "embedding_size": 126464,
        "mask_token_id": 126336,
        "eos_token_id": 126081,
        "pad_token_id": 126081,
    },
    "dream_7b": {
        "base": "dream",
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "mask_token_id": 151666,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "pad_token_id": 151643,
        "torch_dtype": "bfloat16",
    },
}


# the newer families: the full-size config (experiments/full_size) and its tiny twin (tests/fixtures) for --smoke
FULL_SIZE.update(
    {
        "llada_moe_7b": {"base": "tests/fixtures/llada-moe-tiny", "full": "experiments/full_size/llada-moe-7b-a1b"},
        "llada2_mini": {"base": "tests/fixtures/llada2-mini-tiny", "full": "experiments/full_size/llada2-mini"},
    }
)


def write_config(name: str, directory: Path, smoke: bool) -> Path:
    overrides = dict(FULL_SIZE[name])
    family = overrides.pop("base")
    full = overrides.pop("full", None)
    base = tiny_checkpoint(family) if full is None else REPO_ROOT / family
    config = json.loads((base / "config.json").read_text())
    if not smoke:
        config = json.loads((REPO_ROOT / full / "config.json").read_text()) if full else {**config, **overrides}
    target = directory / name
    target.mkdir()
    (target / "config.json").write_text(json.dumps(config))
    return target


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    device = torch.device(args.device)
    model = load_model(write_config(name, workdir, args.smoke), dtype=args.dtype, device=device, random_weights=True)
    generator = torch.Generator().manual_seed(0)
    vocab_ordinary = model.spec.tokens.eos - 1
    prompt = torch.randint(0, vocab_ordinary, (args.batch, args.prompt), generator=generator).to(device)
    settings = {"gen_length": args.gen, "steps": args.steps, "block_length": args.block}
    generate(
        model, prompt[:, :16], **{**settings, "gen_length": args.block, "steps": args.steps // (args.gen // args.block)}
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    out = generate(model, prompt, **settings)
    synchronize(device)
    seconds = time.perf_counter() - start
    record = {
        "model": name,
        "method": "vanilla",
        "dtype": args.dtype,
        "batch": args.batch,
        "prompt_length": args.prompt,
        **settings,
        "nfe": out.nfe,
        "seconds": round(seconds, 4),
        "tokens_per_second": round(args.batch * args.gen / seconds, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
    }
    if device.type == "cuda":
        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    del model
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FULL_SIZE), choices=list(FULL_SIZE))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny fixture sizes, for a CPU check of this script")
    parser.add_argument("--out", type=Path, help="write the records as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        records = [bench(name, args, Path(tmp)) for name in args.models]
    for record in records:
        print(json.dumps(record))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
