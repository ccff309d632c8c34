"""Silence the warnings every run would repeat that say nothing about this run.

Only exact, known messages are dropped; anything else still reaches the console.
"""

from __future__ import annotations

import logging

# lm-eval warns on each task whose data comes from a ``custom_dataset`` callable (every local-file
# task here) that kwargs could be passed through --metadata: advice, repeated once per task and point.
_KNOWN = {"lm_eval.api.task": ("Custom kwargs can be passed to `--metadata`",)}


class _DropKnown(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_known_warnings() -> None:
    """Install the filters once per process (idempotent)."""
    for name, fragments in _KNOWN.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(fragments))
