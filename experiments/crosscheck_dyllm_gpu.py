"""Ours against the official DyLLM engine (scale-snu/DyLLM) on one GPU: outputs and tokens/s.

NOT RUN YET (no GPU was lent when it was written). Needs CUDA, the official engine installed in
its own environment (flash-attn, its CUDA extensions) and importable from ``--official`` at run
time, and a LLaDA-8B directory: the real checkpoint (``--model-path``), or only its tokenizer
and ``config.json`` (``--tokenizer-dir``) for random full-size weights written here in the
official layout. Nothing of the official code is copied into this project.

    python experiments/crosscheck_dyllm_gpu.py --official /path/to/DyLLM \
        --tokenizer-dir /models/LLaDA-8B-Instruct --batch 1 8 --out results/bench/dyllm_gpu.json

Both sides run the shipped settings (threshold 0.99, 4 dense steps, 256 steps for 256 tokens,
blocks of 32, greedy, the engine's top-p 1.0), with the EOS exit off (``ignore_eos``) so both
produce every position, bf16, the same prompt ids (random ordinary tokens, ``--prompt``
long). Per batch size: tokens/s of each side (generated positions over synchronized wall time,
the median of ``--repeats`` after one warm-up), and how many requests' generated ids are
identical. Identity is not expected everywhere: the official kernel adds the cosine sums with
atomics in an order that varies, flash-attn and SDPA round differently, and a flipped saliency
decision changes the rest of a request (spec B.8 items 6 and 14); the first differing position
per request is recorded to show where they part.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dllm_accel import build_method, generate, load_model  # noqa: E402
from dllm_accel.train.checkpoint import write_llada_checkpoint  # noqa: E402

SETTINGS = {"threshold": 0.99, "num_full_steps": 4, "steps": 256, "gen_length": 256, "block_length": 32}


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """The real checkpoint, or random full-size weights in the official layout beside its tokenizer."""
    if args.model_path:
        return args.model_path
    target = Path(tempfile.mkdtemp(prefix="dyllm_random_"))
    for item in args.tokenizer_dir.iterdir():
        if item.is_file() and not item.name.endswith((".safetensors", ".bin")) and item.name != "model.safetensors.index.json":
            shutil.copy(item, target / item.name)
    model = load_model(target, dtype=torch.bfloat16, device="cuda", random_weights=True, seed=0)
    write_llada_checkpoint(model, target, torch.bfloat16)
    del model
    torch.cuda.empty_cache()
    return target


def ours(path: Path, prompts: torch.Tensor, repeats: int) -> tuple[list[list[int]], list[float]]:
    model = load_model(path, dtype=torch.bfloat16, device="cuda")
    options = {"threshold": SETTINGS["threshold"], "num_full_steps": SETTINGS["num_full_steps"]}
    sampler = {k: SETTINGS[k] for k in ("steps", "gen_length", "block_length")}
    sampler |= {"sampler": "dyllm", "top_p": 1.0, "eos_early_exit": False}
    walls, out = [], None
    for i in range(repeats + 1):
        torch.cuda.synchronize()
        started = time.perf_counter()
        out = generate(model, prompts.cuda(), method=build_method("dyllm", **options), **sampler)
        torch.cuda.synchronize()
        if i:
            walls.append(time.perf_counter() - started)
    del model
    torch.cuda.empty_cache()
    return out.sequences[:, prompts.shape[1] :].tolist(), walls


def official(path: Path, root: Path, prompts: torch.Tensor, repeats: int) -> tuple[list[list[int]], list[float]]:
    sys.path.insert(0, str(root))
    from dyllm import SamplingParams, dLLM  # the official engine, from --official

    engine = dLLM(str(path), threshold=SETTINGS["threshold"], enforce_eager=True)
    params = SamplingParams(
        temperature=None,
        max_new_tokens=SETTINGS["gen_length"],
        steps=SETTINGS["steps"],
        num_full_steps=SETTINGS["num_full_steps"],
        block_size=SETTINGS["block_length"],
        ignore_eos=True,
        algorithm="confidence",
        top_p=1.0,
    )
    walls, outputs = [], None
    try:
        for i in range(repeats + 1):
            torch.cuda.synchronize()
            started = time.perf_counter()
            outputs = engine.generate([row.tolist() for row in prompts], params)
            torch.cuda.synchronize()
            if i:
                walls.append(time.perf_counter() - started)
    finally:
        engine.exit()
    return [out["token_ids"][-SETTINGS["gen_length"] :] for out in outputs], walls


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="a checkout of scale-snu/DyLLM (built)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-path", type=Path, help="a LLaDA-8B checkpoint directory")
    where.add_argument("--tokenizer-dir", type=Path, help="tokenizer + config.json of LLaDA-8B: random weights")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "dyllm_gpu.json")
    args = parser.parse_args()
    path = checkpoint_dir(args)
    rows = []
    for batch in args.batch:
        generator = torch.Generator().manual_seed(batch)
        prompts = torch.randint(100, 120000, (batch, args.prompt), generator=generator)
        ids_ours, walls_ours = ours(path, prompts, args.repeats)
        ids_official, walls_official = official(path, args.official, prompts, args.repeats)
        positions = batch * SETTINGS["gen_length"]
        rows.append(
            {
                "batch": batch,
                "tokens_per_s_ours": positions / statistics.median(walls_ours),
                "tokens_per_s_official": positions / statistics.median(walls_official),
                "identical_requests": sum(a == b for a, b in zip(ids_ours, ids_official, strict=True)),
                "first_difference": [first_difference(a, b) for a, b in zip(ids_ours, ids_official, strict=True)],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "weights": "real" if args.model_path else "random"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "settings": SETTINGS, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
