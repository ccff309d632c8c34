"""The training pieces of the tiny model: tokenizer, synthetic tasks, objective, trainer, checkpoint writer."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch
from safetensors import safe_open

from dllm_accel.models import load_model, load_spec, load_tokenizer
from dllm_accel.models.families import LLADA
from dllm_accel.synthetic_tasks import KEY_SYMBOLS, PASSKEY_DEPTHS, byte_length, passkey_sample
from dllm_accel.train import (
    TASKS,
    TrainConfig,
    add_mask_noise,
    held_out_samples,
    init_model,
    masked_diffusion_loss,
    save_tokenizer,
    task_named,
    tiny_spec,
    train,
    training_sample,
    write_llada_checkpoint,
)
from dllm_accel.train.objective import weighted_masked_cross_entropy
from dllm_accel.train.tokenizer import BOS_ID, EMBEDDING_SIZE, EOS_ID, EOT_ID, MASK_ID, SPECIAL_TOKENS
from dllm_accel.train.trainer import DEFAULT_CURRICULUM, collate, draw_batch, encode, learning_rate

# A model and data small enough to train for two steps in well under a second.
SMALL = {
    "d_model": 16,
    "n_layers": 1,
    "n_heads": 2,
    "mlp_hidden": 32,
    "curriculum": ((2, {"passkey": 1.0, "arithmetic": 1.0, "copy": 1.0}, (256, 300)),),
    "batch_tokens": 600,
    "warmup_steps": 1,
    "log_every": 1,
    "threads": 1,
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(directory)
    return load_tokenizer(directory)


# ---------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_is_bytes_then_llada_special_tokens(tokenizer):
    text = "Copy: xyz\nAnswer: 12 + 3 = 15.\n#### 15 é"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == encode(text) == list(text.encode())
    assert tokenizer.decode(ids) == text
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(256, 256 + len(SPECIAL_TOKENS)))
    assert (tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id) == (
        MASK_ID,
        EOS_ID,
        EOS_ID,
        BOS_ID,
    )
    assert tokenizer("a<|mdm_mask|>b<|eot_id|>", add_special_tokens=False)["input_ids"] == [97, MASK_ID, 98, EOT_ID]
    assert len(tokenizer) <= EMBEDDING_SIZE


def test_tokenizer_files_use_llada_hub_schema(tmp_path):
    save_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    decoder = {entry["content"]: int(i) for i, entry in config["added_tokens_decoder"].items()}
    assert decoder == {"<|startoftext|>": 256, "<|endoftext|>": 257, "<|mdm_mask|>": 258} | {
        "<|start_header_id|>": 259,
        "<|end_header_id|>": 260,
        "<|eot_id|>": 261,
    }
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    save_tokenizer(tmp_path)
    assert first == {p.name: p.read_bytes() for p in tmp_path.iterdir()}


def test_chat_template_is_llada_instruct(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": " Hi "}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


# ---------------------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("task", list(TASKS))
def test_held_out_samples_are_deterministic_and_held_out(task):
    first = held_out_samples(task, 6)
    assert first == held_out_samples(task, 6)
    assert all(s.held_out for s in first)
    assert all(TASKS[task].score(s.answer, s) for s in first)
    assert len({s.prompt for s in first}) == 6


@pytest.mark.parametrize("task", list(TASKS))
def test_training_samples_never_come_from_the_held_out_split(task):
    rng = random.Random(7)
    samples = [training_sample(task, rng, 300 if task == "passkey" else None) for _ in range(40)]
    assert not any(s.held_out for s in samples)


def test_passkey_fills_its_budget_and_its_key_letters_occur_only_in_the_needle():
    for depth in PASSKEY_DEPTHS:
        sample = passkey_sample(512, depth, 3, 1234)
        budget = 512 - TASKS["passkey"].decode.gen_length
        assert budget - 25 < byte_length(sample.prompt) <= budget  # one more noise sentence would not fit
        assert sample.answer == " " + sample.target and len(sample.target) == 1 and sample.target in KEY_SYMBOLS
        needle = f"The pass key is {sample.target}. Remember it. {sample.target} is the pass key."
        rest = sample.prompt.replace(needle, "")
        assert sample.prompt.count(needle) == 1 and not set(rest) & set(KEY_SYMBOLS)
    start = passkey_sample(1024, 0.0, 0, 1).prompt
    end = passkey_sample(1024, 1.0, 0, 1).prompt
    assert start.index("The pass key is") < 200 and end.index("The pass key is") > 800


def test_held_out_passkeys_cycle_through_depths():
    samples = held_out_samples("passkey", 10, 400)
    assert [s.meta["depth"] for s in samples] == list(PASSKEY_DEPTHS) * 2
    assert all(s.meta["target_len"] == 400 for s in samples)


def test_arithmetic_answers_are_correct_chains():
    rng = random.Random(3)
    for _ in range(50):
        sample = training_sample("arithmetic", rng)
        numbers = [int(n) for n in re.findall(r"\d+", sample.prompt)]
        steps = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", sample.answer)
        assert len(steps) == 3
        assert int(steps[0][0]) == numbers[0]
        for (a, op, b, c), operand in zip(steps, numbers[1:], strict=False):
            assert int(b) == operand
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
            assert 0 <= int(c) <= 9
        assert sample.answer.endswith(f"\n#### {steps[-1][3]}") and sample.target == steps[-1][3]


def test_copy_span_fills_the_window_but_one_eos():
    copy = training_sample("copy", random.Random(5))
    span = copy.prompt.removeprefix("Copy: ").removesuffix("\nAnswer: ")
    assert copy.answer == copy.target == span and len(span) == 31 and span.isalpha()
    assert len(copy.answer) + 1 == TASKS["copy"].decode.gen_length


def test_scorers_are_exact():
    passkey = passkey_sample(300, 0.5, 0, 0)
    assert TASKS["passkey"].score(f" {passkey.target}.", passkey)
    assert not TASKS["passkey"].score(f" {passkey.target}1", passkey)
    assert not TASKS["passkey"].score(f" {passkey.target[:-1]}", passkey)
    arithmetic = held_out_samples("arithmetic", 1)[0]
    assert TASKS["arithmetic"].score(f" 1 + 1 = 2.\n#### {arithmetic.target}", arithmetic)
    assert not TASKS["arithmetic"].score(f" {arithmetic.target}", arithmetic)
    copy = held_out_samples("copy", 1)[0]
    assert TASKS["copy"].score(copy.answer + "\n", copy)
    assert not TASKS["copy"].score(copy.answer[:-1], copy)
    assert not TASKS["copy"].score("", copy)


def test_bad_task_and_length_are_named():
    with pytest.raises(ValueError, match="unknown synthetic task 'sort'.*passkey"):
        task_named("sort")
    with pytest.raises(ValueError, match="target length 100 is too short"):
        passkey_sample(100, 0.0, 0, 0)
    with pytest.raises(ValueError, match="depth=1.5 must be in"):
        passkey_sample(512, 1.5, 0, 0)


# ---------------------------------------------------------------------------------------- objective
def test_noise_masks_only_maskable_positions_at_rate_p():
    ids = torch.arange(4000).remainder(250).view(4, 1000)
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, 200:] = True
    noised = add_mask_noise(ids, maskable, MASK_ID, torch.Generator().manual_seed(0), eps=1e-3)
    assert not noised.masked[:, :200].any()
    assert torch.equal(noised.noisy[noised.masked], torch.full((int(noised.masked.sum()),), MASK_ID))
    assert torch.equal(noised.noisy[~noised.masked], ids[~noised.masked])
    assert ((noised.p_mask >= 1e-3) & (noised.p_mask <= 1)).all()
    observed = noised.masked[:, 200:].float().mean(dim=1)
    assert torch.allclose(observed, noised.p_mask, atol=0.06)


def test_stratified_mask_ratios_are_evenly_spread():
    ids = torch.zeros(8, 4, dtype=torch.long)
    noised = add_mask_noise(ids, ids == 0, MASK_ID, torch.Generator().manual_seed(3), eps=1e-3, stratified=True)
    gaps = noised.p_mask.sort().values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - 1e-3) / 8), atol=1e-6)


def test_noise_rejects_bad_inputs():
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps=0"):
        add_mask_noise(ids, ids.bool(), MASK_ID, torch.Generator(), eps=0.0)
    with pytest.raises(ValueError, match="maskable must be a bool tensor"):
        add_mask_noise(ids, ids, MASK_ID, torch.Generator())


def test_loss_is_llada_weighted_cross_entropy():
    """All positions maskable: sum(CE / p over masked) / (B * L), LLaDA's pre-training formula."""
    model = init_model(TrainConfig(**SMALL))
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(1))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    loss = masked_diffusion_loss(model, ids, maskable, torch.Generator().manual_seed(2))
    noised = add_mask_noise(ids, maskable, MASK_ID, torch.Generator().manual_seed(2))
    logits, _ = model(noised.noisy)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none")
    p = noised.p_mask[:, None].expand_as(ids).reshape(-1)
    manual = (ce / p)[noised.masked.reshape(-1)].sum() / ids.numel()
    assert torch.allclose(loss, manual, rtol=1e-5)


def test_loss_normalises_by_response_length():
    """Response-only masking: each sequence's sum is divided by its own maskable count (LLaDA SFT)."""
    logits = torch.zeros(2, 4, 8)
    targets = torch.zeros(2, 4, dtype=torch.long)
    maskable = torch.tensor([[False, True, True, True], [False, False, False, True]])
    masked = torch.tensor([[False, True, False, False], [False, False, False, True]])
    noised = add_mask_noise(targets, maskable, MASK_ID, torch.Generator().manual_seed(0))
    noised = replace(noised, masked=masked, p_mask=torch.tensor([0.5, 0.25]))
    per_token = torch.log(torch.tensor(8.0))
    expected = ((per_token / 0.5) / 3 + (per_token / 0.25) / 1) / 2
    assert torch.allclose(weighted_masked_cross_entropy(logits, targets, noised, maskable), expected)


# ---------------------------------------------------------------------------------------- trainer
def test_collate_pads_responses_with_eos_and_masks_only_them():
    a, b = held_out_samples("copy", 2)
    ids, maskable = collate([a, b], response_length=48)
    longest = max(len(a.prompt), len(b.prompt))
    assert ids.shape == (2, longest + 48)
    for row, mask, sample in zip(ids, maskable, [a, b], strict=True):
        p = len(sample.prompt)
        assert row[:p].tolist() == encode(sample.prompt)
        assert row[p : p + len(sample.answer)].tolist() == encode(sample.answer)
        assert (row[p + len(sample.answer) :] == EOS_ID).all()
        assert not mask[:p].any() and mask[p:].all()
    with pytest.raises(ValueError, match="leaves no room for EOS"):
        collate([a], response_length=len(a.answer))


def test_batches_follow_the_curriculum_stage():
    stages = ((3, {"copy": 1.0}, (256, 256)), (2, {"arithmetic": 3.0, "copy": 1.0, "passkey": 0.0}, (256, 256)))
    config = TrainConfig(**{**SMALL, "batch_tokens": 2000, "curriculum": stages})
    assert config.steps == 5
    rng = random.Random(0)
    batches = [draw_batch(config, rng, step) for step in range(5)]
    assert [sorted(b) for b in batches] == [["copy"]] * 3 + [["arithmetic", "copy"]] * 2
    tokens = {name: ids.numel() for name, (ids, _) in batches[-1].items()}
    assert 2.0 < tokens["arithmetic"] / tokens["copy"] < 4.5
    assert config.stage_at(99) == stages[1]


def test_curriculum_survives_a_json_round_trip():
    config = TrainConfig()
    again = TrainConfig(**json.loads(json.dumps(asdict(config))))
    assert again == config and again.curriculum == DEFAULT_CURRICULUM


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = TrainConfig(curriculum=((100, {"copy": 1.0}, (256, 256)),), warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(config, 0) == pytest.approx(1e-4)
    assert learning_rate(config, 9) == pytest.approx(1e-3)
    assert learning_rate(config, 100) == pytest.approx(1e-4)
    rates = [learning_rate(config, s) for s in range(10, 101)]
    assert all(x >= y for x, y in zip(rates, rates[1:], strict=False))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"curriculum": ((10, {"sort": 1.0}, (256, 256)),)}, "unknown synthetic task 'sort'"),
        ({"curriculum": ((10, {"copy": 0.0}, (256, 256)),)}, "positive sum"),
        ({"curriculum": ((0, {"copy": 1.0}, (256, 256)),)}, "at least 1 step"),
        ({"curriculum": ((10, {"copy": 1.0}, (64, 512)),)}, "passkey lengths (64, 512)"),
        ({"curriculum": ()}, "curriculum is empty"),
        ({"d_model": 30, "n_heads": 4}, "d_model=30 is not divisible by n_heads=4"),
    ],
)
def test_bad_train_config_is_named(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**override)


def test_training_is_deterministic_given_the_seed(tmp_path):
    config = TrainConfig(**SMALL)
    first = train(config, tmp_path / "log.jsonl").state_dict()
    again = train(config, None).state_dict()
    other = train(TrainConfig(**{**SMALL, "seed": 1}), None).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(v > 0 for r in records for v in r["loss"].values())


def test_training_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = init_model(TrainConfig(**SMALL))
    ids, maskable = collate(held_out_samples("copy", 4), 48)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = masked_diffusion_loss(model, ids, maskable, torch.Generator().manual_seed(step % 3))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])


# ---------------------------------------------------------------------------------------- checkpoint
def test_written_checkpoint_loads_unchanged_with_official_names(tmp_path):
    config = TrainConfig(**SMALL)
    model = init_model(config).eval()
    write_llada_checkpoint(model, tmp_path, torch.float32)
    save_tokenizer(tmp_path)
    spec, adapter, _ = load_spec(tmp_path)
    assert adapter is LLADA and spec == tiny_spec(config)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        names = set(handle.keys())
    assert names == set(LLADA.key_map(spec))
    assert "model.transformer.blocks.0.ff_proj.weight" in names and "model.transformer.ff_out.weight" in names
    loaded = load_model(tmp_path)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], loaded(ids)[0])
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["bos_token_id"] == BOS_ID and generation["eos_token_id"] == EOS_ID


def test_checkpoint_writer_rejects_a_dream_spec(tmp_path):
    model = init_model(TrainConfig(**SMALL))
    model.spec = replace(model.spec, family="dream", logit_shift=True)
    with pytest.raises(ValueError, match="family 'dream'"):
        write_llada_checkpoint(model, tmp_path, torch.float32)


# ---------------------------------------------------------------------------------------- scripts
@pytest.mark.heavy
@pytest.mark.slow
def test_train_and_eval_scripts_end_to_end(tmp_path):
    """train_tiny.py writes a loadable checkpoint with its card; eval_tiny.py measures every preset on it."""
    from dllm_accel.paths import REPO_ROOT

    out, tables = tmp_path / "tiny", tmp_path / "tables"
    small = {k: v for k, v in SMALL.items() if k != "curriculum"}
    sets = [arg for key, value in small.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    curriculum = json.dumps([[2, {"copy": 1.0, "passkey": 1.0, "arithmetic": 1.0}, [128, 200]]])
    train_cmd = [sys.executable, "experiments/train_tiny.py", "--out", str(out), "--eval-samples", "2",
                 "--eval-every", "0", "--passkey-lengths", "256", "--set", f"curriculum={curriculum}", *sets]  # fmt: skip
    trained = subprocess.run(train_cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    record = json.loads((out / "train_config.json").read_text())
    assert record["steps"] == 2 and {row["task"] for row in record["accuracy"]} == set(TASKS)
    assert record["weights_sha256"] in (out / "README.md").read_text()
    assert {"loss_curve.png", "model.safetensors", "tokenizer.json", "config.json"} <= {p.name for p in out.iterdir()}
    eval_cmd = [sys.executable, "experiments/eval_tiny.py", "--checkpoint", str(out), "--out", str(tables),
                "--samples", "2", "--no-sweeps", "--margins", "2", "--passkey-lengths", "256", "300", "--threads", "1"]  # fmt: skip
    evaluated = subprocess.run(eval_cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = json.loads((tables / "tiny_eval.json").read_text())["rows"]
    presets = {row["preset"] for row in rows}
    assert {"vanilla", "sparse_dllm", "dyllm", "fast_dllm", "dllm_cache"} <= presets
    assert all(row["status"] == "ok" for row in rows), [r.get("error") for r in rows if r["status"] != "ok"]
    assert all(row["peak_memory_bytes"] > 0 and row["nfe_per_position"] > 0 for row in rows)
    margins = json.loads((tables / "tiny_ci_accuracy.json").read_text())
    assert margins["samples_per_task"] == 2 and set(margins["accuracy"]) == presets
