"""Record the official forward and sampler outputs on the tiny family checkpoints.

Runs the official modeling and generation code, imported at run time from fetched checkouts
(nothing of it is copied into this repository), on the checkpoints written by
``make_tiny_checkpoints.py``, on CPU in float32, and writes ``<checkpoint>/cases.json`` and
``<checkpoint>/forward.safetensors`` with the commits, file hashes and environment.

Needs its own environment (torch 2.13.0 CPU and transformers 4.57.0, ZHZisZZ/dllm's pin):

    python experiments/make_family_cases.py --fixtures tests/fixtures \
        --dllm /work/official/dllm --llada /work/official/LLaDA --dream-coder /work/official/Dream-Coder
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import platform
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _package(name: str, directory: Path) -> str:
    """Register ``directory`` as package ``name`` without running its ``__init__`` (it registers Auto classes)."""
    module = types.ModuleType(name)
    module.__path__ = [str(directory)]
    sys.modules[name] = module
    return name


def _module_from_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _commit(checkout: Path) -> str:
    """The commit the checkout was extracted from (recorded by the caller in COMMIT, else git)."""
    marker = checkout / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    try:
        return subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _official_model(config_cls, model_cls, directory: Path):
    raw = json.loads((directory / "config.json").read_text())
    fields = {k: v for k, v in raw.items() if k not in ("architectures", "auto_map", "model_type", "torch_dtype")}
    config = config_cls(**fields)
    config._attn_implementation = "sdpa"
    model = model_cls(config).eval()
    state = load_file(directory / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers_only = [k for k in missing if "rotary_emb" not in k]
    if buffers_only or unexpected:
        raise SystemExit(
            f"{directory}: official model did not take the checkpoint: missing {buffers_only}, unexpected {unexpected}"
        )
    return model, config


def _block_causal(length: int, block: int) -> torch.Tensor:
    blocks = torch.arange(length) // block
    return (blocks[:, None] >= blocks[None, :])[None, None]


def _forward_cases(model, name: str, vocab_limit: int, seed: int, block_causal: bool) -> tuple[list[dict], dict]:
    generator = torch.Generator().manual_seed(seed)
    cases, tensors = [], {}
    shapes = [(1, 24), (2, 37)]
    for index, (batch, length) in enumerate(shapes):
        ids = torch.randint(0, vocab_limit, (batch, length), generator=generator)
        variants = [("full", None)]
        if block_causal:
            variants.append(("block8", _block_causal(length, 8)))
        else:
            pad = torch.ones(batch, length, dtype=torch.long)
            pad[-1, :5] = 0
            variants.append(("leftpad5", pad))
        for kind, mask in variants:
            key = f"{name}_{index}_{kind}"
            with torch.no_grad():
                if mask is not None and mask.dim() == 4:
                    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
                    logits = model(ids, attention_mask=additive).logits
                else:
                    logits = model(ids, attention_mask=mask).logits
            tensors[key] = logits.float().contiguous()
            valid = torch.ones(batch, length, dtype=torch.bool) if mask is None or mask.dim() == 4 else mask.bool()
            cases.append(
                {
                    "name": key,
                    "input_ids": ids.tolist(),
                    "attention_mask_2d": None if mask is None or mask.dim() == 4 else mask.tolist(),
                    "block_causal_block": 8 if kind == "block8" else None,
                    "valid_positions": valid.tolist(),
                    "logits_key": key,
                }
            )
    return cases, tensors


def _prompts(seed: int, batch: int, length: int, vocab_limit: int) -> torch.Tensor:
    return torch.randint(0, vocab_limit, (batch, length), generator=torch.Generator().manual_seed(seed))


def llada_moe_cases(args, directory: Path) -> dict:
    pkg = _package("official_lladamoe", args.dllm / "dllm/pipelines/llada/models")
    cfg = importlib.import_module(f"{pkg}.configuration_lladamoe")
    modeling = importlib.import_module(f"{pkg}.modeling_lladamoe")
    sampler = _module_from_file("official_llada_generate", args.llada / "generate.py")
    model, config = _official_model(cfg.LLaDAMoEConfig, modeling.LLaDAMoEModelLM, directory)
    mask_id = json.loads((directory / "config.json").read_text())["mask_token_id"]
    forward, tensors = _forward_cases(model, "llada_moe", mask_id - 100, 1901, block_causal=False)
    generate_cases = []
    settings_list = [
        ("gen16_steps16_block8", {"gen_length": 16, "steps": 16, "block_length": 8}),
        ("gen24_steps12_block8", {"gen_length": 24, "steps": 12, "block_length": 8}),
        ("gen16_steps8_block16_random", {"gen_length": 16, "steps": 8, "block_length": 16, "remasking": "random"}),
        ("gen16_steps16_block16_temp1", {"gen_length": 16, "steps": 16, "block_length": 16, "temperature": 1.0}),
    ]
    for index, (label, settings) in enumerate(settings_list):
        prompt = _prompts(1910 + index, 2, 12, mask_id - 100)
        seed = 1920 + index
        torch.manual_seed(seed)
        with torch.no_grad():
            out = sampler.generate(model, prompt, mask_id=mask_id, **settings)
        generate_cases.append(
            {
                "name": label,
                "call": "generate(model, prompt, mask_id=mask_id, **settings)  # official ML-GSAI/LLaDA generate.py",
                "settings": settings,
                "prompt_ids": prompt.tolist(),
                "torch_manual_seed": seed,
                "rng_dependent": settings.get("temperature", 0.0) > 0 or settings.get("remasking") == "random",
                "expected_output_ids": out.tolist(),
            }
        )
    files = [
        args.dllm / "dllm/pipelines/llada/models/modeling_lladamoe.py",
        args.dllm / "dllm/pipelines/llada/models/configuration_lladamoe.py",
        args.llada / "generate.py",
    ]
    return {"forward": forward, "generate": generate_cases, "tensors": tensors, "files": files}


def _cast_masks_to_model_dtype(model) -> None:
    """LLaDA2's ``generate`` builds its 0/-inf block mask in bfloat16, which SDPA refuses next to
    float32 queries; casting it to float32 on the way in is exact (0 and -inf are representable)."""
    forward = model.forward
    model.forward_calls = 0

    def cast(*args, attention_mask=None, **kwargs):
        model.forward_calls += 1
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(torch.float32)
        return forward(*args, attention_mask=attention_mask, **kwargs)

    model.forward = cast


def llada2_cases(args, directory: Path, version: str) -> dict:
    sub = "llada21" if version == "2.1" else "llada2"
    stem = "llada21_moe" if version == "2.1" else "llada2_moe"
    pkg = _package(f"official_{sub}", args.dllm / f"dllm/pipelines/{sub}/models")
    cfg = importlib.import_module(f"{pkg}.configuration_{stem}")
    modeling = importlib.import_module(f"{pkg}.modeling_{stem}")
    model, config = _official_model(cfg.LLaDA2MoeConfig, modeling.LLaDA2MoeModelLM, directory)
    _cast_masks_to_model_dtype(model)
    raw = json.loads((directory / "config.json").read_text())
    mask_id, eos_id = raw["mask_token_id"], raw["eos_token_id"]
    forward, tensors = _forward_cases(model, sub, mask_id - 100, 2001 if version == "2.0" else 2101, block_causal=True)
    settings_list = [
        ("gen32_block8_steps8_t095", {"gen_length": 32, "block_length": 8, "steps": 8, "threshold": 0.95}),
        ("gen32_block8_steps4_t03", {"gen_length": 32, "block_length": 8, "steps": 4, "threshold": 0.3}),
        ("gen24_block8_steps8_t01", {"gen_length": 24, "block_length": 8, "steps": 8, "threshold": 0.1}),
        ("gen32_block16_steps16_t05", {"gen_length": 32, "block_length": 16, "steps": 16, "threshold": 0.5}),
    ]
    if version == "2.1":
        settings_list = [
            ("gen32_block8_edit09", {"gen_length": 32, "block_length": 8, "threshold": 0.5, "editing_threshold": 0.9}),
            (
                "gen32_block8_edit05_post4",
                {"gen_length": 32, "block_length": 8, "threshold": 0.3, "editing_threshold": 0.5, "max_post_steps": 4},
            ),
            (
                "gen24_block8_edit03_k2",
                {"gen_length": 24, "block_length": 8, "threshold": 0.2, "editing_threshold": 0.3, "num_to_transfer": 2},
            ),
            (
                "gen32_block16_edit07",
                {"gen_length": 32, "block_length": 16, "threshold": 0.9, "editing_threshold": 0.7, "max_post_steps": 2},
            ),
        ]
    generate_cases = []

    def record(label: str, settings: dict, prompt: torch.Tensor, stop_id: int) -> torch.Tensor:
        model.forward_calls = 0
        with torch.no_grad():
            out = model.generate(prompt, eos_id=stop_id, mask_id=mask_id, **settings)
        generate_cases.append(
            {
                "name": label,
                "call": "model.generate(prompt, eos_id=eos_id, mask_id=mask_id, **settings)  # official LLaDA2MoeModelLM.generate",
                "settings": settings if stop_id == eos_id else {**settings, "eos_id": stop_id},
                "prompt_ids": prompt.tolist(),
                "rng_dependent": False,
                "expected_generated_ids": out.tolist(),
                "nfe": model.forward_calls,
            }
        )
        return out

    for index, (label, settings) in enumerate(settings_list):
        for prompt_length in (11, 16):
            prompt = _prompts(2010 + 10 * index + prompt_length, 1, prompt_length, mask_id - 100)
            out = record(f"{label}_prompt{prompt_length}", settings, prompt, eos_id)
            if prompt_length == 11 and index < 2:
                # a token the run produced in its second block, taken as EOS: the early stops fire
                stop = int(out[0, 12])
                record(f"{label}_prompt{prompt_length}_eos{stop}", settings, prompt, stop)
                record(
                    f"{label}_prompt{prompt_length}_eos{stop}_early", {**settings, "eos_early_stop": True}, prompt, stop
                )
    base = args.dllm / f"dllm/pipelines/{sub}/models"
    files = [base / f"modeling_{stem}.py", base / f"configuration_{stem}.py"]
    return {"forward": forward, "generate": generate_cases, "tensors": tensors, "files": files}


def dream_cases(args, directory: Path, coder: str) -> dict:
    """DiffuCoder and Dream-Coder run Dream's modeling code; the sampler is Dream's ``diffusion_generate``
    as Dream-Coder publishes it (``dream_utils.py``; apple/ml-diffucoder ships no sampler and points to
    Dream's). Needs transformers 4.46.2, Dream's pin (4.57 lacks what its generation config expects)."""
    pkg = _package("official_dream", args.dllm / "dllm/pipelines/dream/models")
    cfg = importlib.import_module(f"{pkg}.configuration_dream")
    modeling = importlib.import_module(f"{pkg}.modeling_dream")
    utils_path = args.dream_coder / "instruct/code_eval/lcb/diffusion_utils/dream_utils.py"
    utils = _module_from_file("official_dream_coder_utils", utils_path)
    model_cls = type("DreamWithDreamCoderSampler", (utils.DreamGenerationMixin, modeling.DreamModel), {})
    files = [args.dllm / "dllm/pipelines/dream/models/modeling_dream.py", utils_path]
    model, config = _official_model(cfg.DreamConfig, model_cls, directory)
    raw = json.loads((directory / "config.json").read_text())
    mask_id = raw["mask_token_id"]
    forward, tensors = _forward_cases(
        model, coder, mask_id - 100, 2201 if coder == "dream_coder" else 2301, block_causal=False
    )
    # the models' published settings: DiffuCoder README (entropy, top_p 0.95, temperature 0.2-0.4,
    # steps = tokens), Dream-Coder README (entropy, top_p 0.95, temperature 0.1)
    temperature = 0.1 if coder == "dream_coder" else 0.3
    settings_list = [
        ("entropy_greedy_gen16_steps16", {"max_new_tokens": 16, "steps": 16, "alg": "entropy", "temperature": 0.0}),
        (
            "entropy_paper_gen16_steps16",
            {
                "max_new_tokens": 16,
                "steps": 16,
                "alg": "entropy",
                "temperature": temperature,
                "top_p": 0.95,
                "alg_temp": 0.0,
            },
        ),
        (
            "entropy_paper_gen24_steps12",
            {
                "max_new_tokens": 24,
                "steps": 12,
                "alg": "entropy",
                "temperature": temperature,
                "top_p": 0.95,
                "alg_temp": 0.0,
            },
        ),
        ("maskgit_plus_gen16_steps8", {"max_new_tokens": 16, "steps": 8, "alg": "maskgit_plus", "temperature": 0.0}),
    ]
    generate_cases = []
    base = 2210 if coder == "dream_coder" else 2310
    pad_id = raw["pad_token_id"]
    for index, (label, settings) in enumerate(settings_list):
        prompt = _prompts(base + index, 2, 10, mask_id - 100)
        attention_mask = None
        if index == 1:  # the paper setting once with a left-padded row
            attention_mask = torch.ones_like(prompt)
            attention_mask[1, :3] = 0
            prompt[1, :3] = pad_id
        seed = base + 10 + index
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.diffusion_generate(
                prompt, attention_mask=attention_mask, return_dict_in_generate=True, output_history=True, **settings
            )
        generate_cases.append(
            {
                "name": label if attention_mask is None else f"{label}_leftpad3",
                "call": "model.diffusion_generate(prompt, attention_mask=attention_mask, **settings)  # official Dream sampler",
                "settings": settings,
                "attention_mask": None if attention_mask is None else attention_mask.tolist(),
                "prompt_ids": prompt.tolist(),
                "torch_manual_seed": seed,
                "rng_dependent": settings["temperature"] > 0,
                "expected_output_ids": out.sequences.tolist(),
                "trajectory": [h.tolist() for h in out.history],
            }
        )
    return {"forward": forward, "generate": generate_cases, "tensors": tensors, "files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, required=True)
    parser.add_argument("--dllm", type=Path, required=True, help="checkout of ZHZisZZ/dllm")
    parser.add_argument("--llada", type=Path, required=True, help="checkout of ML-GSAI/LLaDA (generate.py)")
    parser.add_argument("--dream-coder", type=Path, required=True, help="checkout of DreamLM/Dream-Coder")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(2)
    jobs = {
        "llada-moe-tiny": lambda d: llada_moe_cases(args, d),
        "llada2-mini-tiny": lambda d: llada2_cases(args, d, "2.0"),
        "llada21-mini-tiny": lambda d: llada2_cases(args, d, "2.1"),
        "dream-coder-tiny": lambda d: dream_cases(args, d, "dream_coder"),
        "diffucoder-tiny": lambda d: dream_cases(args, d, "diffucoder"),
    }
    import transformers

    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "device": "cpu",
        "dtype": "float32",
        "machine": platform.machine(),
    }
    for name in args.only or jobs:
        directory = args.fixtures / name
        result = jobs[name](directory)
        save_file(result["tensors"], directory / "forward.safetensors")
        checkouts = {"dllm": args.dllm, "llada": args.llada, "dream_coder": args.dream_coder}
        record = {
            "checkpoint": name,
            "environment": environment,
            "official": {
                "commits": {k: _commit(v) for k, v in checkouts.items()},
                "files_sha256": {
                    str(f.relative_to(next(v for v in checkouts.values() if f.is_relative_to(v)))): _sha256(f)
                    for f in result["files"]
                },
            },
            "checkpoint_sha256": {
                f.name: _sha256(f)
                for f in sorted(directory.glob("*"))
                if f.name in ("config.json", "model.safetensors")
            },
            "forward": result["forward"],
            "generate": result["generate"],
        }
        (directory / "cases.json").write_text(json.dumps(record) + "\n")
        print(name, len(result["forward"]), "forward,", len(result["generate"]), "generate cases")


if __name__ == "__main__":
    main()
