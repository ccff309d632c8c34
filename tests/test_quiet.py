"""Known repeated warnings are dropped; every other message still gets through."""

from __future__ import annotations

import logging

from dllm_accel.quiet import silence_known_warnings


def test_known_lm_eval_advice_is_dropped_and_the_rest_kept(caplog):
    silence_known_warnings()
    silence_known_warnings()  # idempotent: one filter
    logger = logging.getLogger("lm_eval.api.task")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="lm_eval.api.task"):
        logger.warning("dllm_tiny_passkey: Custom kwargs can be passed to `--metadata` in console (as json string)")
        logger.warning("dllm_tiny_passkey: something else went wrong")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["dllm_tiny_passkey: something else went wrong"]
