"""lm-eval's own command line with the ``dllm_accel`` model registered.

    python -m dllm_accel.lm_eval --model dllm_accel \\
        --model_args pretrained=<hub id or dir>,method=<preset>,<method, sampler, likelihood options> \\
        --tasks <any lm-eval task> [every other lm-eval option]

lm-eval 0.4.x finds models only in its own registry (it reads no package entry points), so a
plain ``lm_eval`` process cannot see this package. This module registers the model lazily
(nothing heavy is imported until lm-eval asks for it) and hands over to ``cli_evaluate``; in
Python, ``import dllm_accel.lm_eval`` before ``lm_eval.simple_evaluate(model="dllm_accel", ...)``
does the same. Local task folders go through lm-eval's ``--include_path`` as usual.
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401  (lm-eval's own names first: get_model skips them once the registry is non-empty)
from lm_eval.api.registry import model_registry

MODEL_NAME = "dllm_accel"
MODEL_CLASS = "dllm_accel.eval.lm:DiffusionLM"

if MODEL_NAME not in model_registry:
    model_registry.register(MODEL_NAME, target=MODEL_CLASS)


def main() -> None:
    """lm-eval's CLI; a rejected ``--model_args`` value (``method=nope``) is one line, as in the runner."""
    from lm_eval.__main__ import cli_evaluate

    from .errors import reported

    with reported():
        cli_evaluate()


if __name__ == "__main__":
    main()
