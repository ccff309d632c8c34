"""README's Python snippets run as written, on the tiny trained model instead of the hub checkpoints."""

from __future__ import annotations

import re

import pytest

from dllm_accel.paths import REPO_ROOT

TINY = str(REPO_ROOT / "checkpoints" / "tiny-llada")
# What a snippet names that CI cannot have: hub checkpoints (no network) and a GPU.
STAND_INS = {
    '"GSAI-ML/LLaDA-8B-Instruct"': repr(TINY),
    '"GSAI-ML/LLaDA-8B-Base"': repr(TINY),
    '"cuda"': '"cpu"',
}


def python_blocks() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_has_python_snippets():
    assert python_blocks(), "README lost its Python example"


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_snippet_runs(index, capsys):
    code = python_blocks()[index]
    for name, stand_in in STAND_INS.items():
        code = code.replace(name, stand_in)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})


def test_generate_takes_a_tokenizer_output():
    import torch

    from dllm_accel import generate, load_model

    model = load_model(TINY, dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = generate(model, ids, gen_length=4, steps=4)
    mapped = generate(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, gen_length=4, steps=4)
    assert torch.equal(plain.sequences, mapped.sequences)
    with pytest.raises(TypeError, match="got list"):
        generate(model, [[5, 6, 7, 8]], gen_length=4, steps=4)
