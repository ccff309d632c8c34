"""Train the tiny LLaDA-format diffusion LM and write it, with its card, to ``checkpoints/tiny-llada``.

    .venv/bin/python experiments/train_tiny.py                      # the committed run
    .venv/bin/python experiments/train_tiny.py --out /tmp/tiny --set 'curriculum=[[50, {"copy": 1}, [256, 512]]]' --eval-samples 10

The folder gets config.json / generation_config.json / model.safetensors (official LLaDA
names), the byte-level tokenizer, ``train_config.json`` (every setting, the environment, the
wall time and the weights' sha256), ``train_log.jsonl``, ``loss_curve.png`` and a model
card ``README.md`` with held-out accuracy per task, measured on the written checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dllm_accel.models import load_model, load_tokenizer  # noqa: E402
from dllm_accel.synthetic_tasks import PASSKEY_DEPTHS  # noqa: E402
from dllm_accel.train import (  # noqa: E402
    TASKS,
    TrainConfig,
    evaluate_samples,
    held_out_samples,
    save_tokenizer,
    train,
    write_llada_checkpoint,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints" / "tiny-llada")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="dtype the weights are stored in")
    parser.add_argument("--eval-samples", type=int, default=100, help="held-out samples per task for the card")
    parser.add_argument("--eval-every", type=int, default=500, help="log held-out accuracy every N steps (0: never)")
    parser.add_argument(
        "--passkey-lengths", type=int, nargs="+", default=[512, 1024], help="passkey lengths on the card"
    )
    parser.add_argument(
        "--card-only", action="store_true", help="rewrite README.md from the folder's train_config.json, no training"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override a TrainConfig field, e.g. --set seed=1 --set 'curriculum=[[200, {\"copy\": 1}, [256, 512]]]'",
    )
    return parser.parse_args()


def build_config(args: argparse.Namespace) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set {item!r}: expected FIELD=JSON with FIELD one of {', '.join(sorted(known))}")
        overrides[key] = json.loads(value)
    return TrainConfig(**overrides)


def progress_hook(tokenizer, n: int, every: int):
    """Every ``every`` steps, held-out accuracy on ``n`` samples per task is added to the log record."""
    samples = {name: held_out_samples(name, n) for name in TASKS}

    def hook(record: dict, model) -> None:
        if every and record["step"] % every == 0:
            record["accuracy"] = {
                name: evaluate_samples(model, tokenizer, TASKS[name], group).accuracy for name, group in samples.items()
            }
            print(json.dumps(record), flush=True)

    return hook


def plot_losses(log_path: Path, image_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for task in TASKS:
        points = [(r["step"], r["loss"][task]) for r in records if task in r["loss"]]
        if points:
            ax.plot(*zip(*points, strict=True), label=task)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("masked-diffusion loss (1/t weighted)")
    ax.set_title("tiny-llada training loss per task")
    ax.legend()
    fig.tight_layout()
    fig.savefig(image_path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def card_accuracy(directory: Path, n: int, passkey_lengths: list[int]) -> list[dict]:
    """Vanilla accuracy of the written checkpoint (as stored, computed in fp32) per task and length."""
    model = load_model(directory, dtype=torch.float32)
    tokenizer = load_tokenizer(directory)
    rows = []
    for name, task in TASKS.items():
        for length in passkey_lengths if name == "passkey" else [None]:
            samples = held_out_samples(name, n, length)
            result = evaluate_samples(model, tokenizer, task, samples)
            rows.append(
                {
                    "task": name,
                    "length": length,
                    "samples": result.total,
                    "accuracy": result.accuracy,
                    "chance": task.chance,
                    "gen_length": task.decode.gen_length,
                    "block_length": task.decode.block_length,
                    "steps": task.decode.steps,
                    "seconds": round(result.seconds, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def write_card(directory: Path, record: dict) -> None:
    config, rows = record["train_config"], record["accuracy"]
    params = record["parameters"]
    lines = [
        "---",
        "license: apache-2.0",
        "tags: [diffusion-lm, llada, synthetic, dllm-accel]",
        "---",
        "",
        "# tiny-llada",
        "",
        "A small masked-diffusion language model in LLaDA's checkpoint format, trained from scratch on",
        "synthetic tasks so that dllm-accel can measure the accuracy cost of acceleration methods on a",
        "CPU. It is a test instrument, not a language model: it knows only these tasks.",
        "",
        "## Model",
        "",
        f"- Architecture: LLaDA (bidirectional transformer, RMSNorm, RoPE theta {config['rope_theta']:g},"
        f" SwiGLU), {config['n_layers']} layers, d_model {config['d_model']}, {config['n_heads']} heads,"
        f" MLP {config['mlp_hidden']}.",
        f"- Parameters: {params:,} ({record['weights_dtype']} weights, {record['weights_bytes'] / 1e6:.1f} MB).",
        "- Tokenizer: byte-level (ids 0-255 are bytes) plus LLaDA's special tokens `<|startoftext|>` 256,"
        " `<|endoftext|>` 257 (eos = pad), `<|mdm_mask|>` 258, `<|start_header_id|>` 259,"
        " `<|end_header_id|>` 260, `<|eot_id|>` 261; embedding padded to 264 rows.",
        "- Prompts are plain text (no chat template); the answer is followed by `<|endoftext|>` up to",
        "  the end of the generation window, as LLaDA's SFT data is padded.",
        "",
        "## Tasks (one held-out example each; the answer is followed by `<|endoftext|>`)",
        "",
        *[f"- `{name}`: `{_example(name)}`" for name in TASKS],
        "",
        "## Training",
        "",
        "- Objective: LLaDA's masked diffusion, t ~ U(0, 1) per sequence, p = (1 - eps) t + eps with"
        f" eps = {config['eps']}, cross-entropy on masked tokens weighted by 1/p; only the response is"
        " masked (LLaDA's SFT form), normalised by the response length.",
        "- Data, generated on the fly (`dllm_accel/synthetic_tasks.py`); every step holds each task of its"
        " curriculum stage, its share of the tokens set by the stage's weights:",
        *[
            f"  - {steps} steps: {weights}, passkey prompts of {low}-{high} tokens (log-uniform)"
            for steps, weights, (low, high) in config["curriculum"]
        ],
        f"- {record['steps']} steps of about {config['batch_tokens']} tokens, AdamW (0.9, 0.95), lr"
        f" {config['lr']:g} with {config['warmup_steps']} warm-up steps and cosine decay to"
        f" {config['min_lr_ratio']:g}x, weight decay {config['weight_decay']:g}, clip {config['grad_clip']:g},"
        f" seed {config['seed']}.",
        f"- {record['tokens_seen']:,} training tokens in {record['train_seconds'] / 60:.1f} min on"
        f" {record['environment']['cpu_threads']} CPU threads ({record['environment']['processor']},"
        f" {record['environment']['machine']}), torch {record['environment']['torch']}.",
        f"- `model.safetensors` sha256: `{record['weights_sha256']}`.",
        "- Loss curve: `loss_curve.png`; log: `train_log.jsonl`; every setting: `train_config.json`.",
        "",
        "## Held-out accuracy (vanilla, greedy, one token per step)",
        "",
        "One sample in eight of each generator (by a stable hash) is held out and never trained on.",
        f"Passkey depths cycle through {list(PASSKEY_DEPTHS)}.",
        "",
        "| task | prompt length | samples | gen_length / block_length / steps | accuracy | chance |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        length = row["length"] if row["length"] is not None else "task's own"
        decode = f"{row['gen_length']} / {row['block_length']} / {row['steps']}"
        lines.append(
            f"| {row['task']} | {length} | {row['samples']} | {decode} | {row['accuracy']:.1%} | {row['chance']:.2g} |"
        )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from dllm_accel import generate, load_model, load_tokenizer",
        'model = load_model("checkpoints/tiny-llada", dtype="float32")',
        'tok = load_tokenizer("checkpoints/tiny-llada")',
        'ids = tok("Question: 9 - 5 = ?. ? + 5 = ?. ? - 8 = ?.\\nAnswer: ", return_tensors="pt").input_ids',
        "out = generate(model, ids, gen_length=40, steps=40, block_length=8)",
        "print(tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True))",
        "```",
        "",
        "Under the runner: `python -m dllm_accel.run experiment=tiny_trained"
        " task=tiny_arithmetic method=sparse_dllm` (see the dllm-accel README).",
        "",
        "Reproduce: `python experiments/train_tiny.py` (same seed, same torch build and thread count",
        "give the same sha256 on the same machine).",
        "",
    ]
    (directory / "README.md").write_text("\n".join(lines))


def _example(name: str) -> str:
    sample = held_out_samples(name, 1, 128 if name == "passkey" else None)[0]
    return (sample.prompt + sample.answer).replace("\n", "\\n")


def main() -> None:
    args = parse_args()
    out: Path = args.out
    if args.card_only:
        write_card(out, json.loads((out / "train_config.json").read_text()))
        return
    config = build_config(args)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(out)
    tokenizer = load_tokenizer(out)
    hook = progress_hook(tokenizer, 10, args.eval_every)
    started = time.perf_counter()
    model = train(config, out / "train_log.jsonl", hook)
    train_seconds = time.perf_counter() - started
    weights = write_llada_checkpoint(model, out, DTYPES[args.dtype])
    plot_losses(out / "train_log.jsonl", out / "loss_curve.png")
    last = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    record = {
        "train_config": asdict(config),
        "steps": config.steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_dtype": args.dtype,
        "weights_bytes": weights.stat().st_size,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "tokens_seen": last["tokens"],
        "train_seconds": round(train_seconds, 1),
        "environment": environment(),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "train_config"}), flush=True)
    record["accuracy"] = card_accuracy(out, args.eval_samples, args.passkey_lengths)
    (out / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")
    write_card(out, record)


if __name__ == "__main__":
    main()
