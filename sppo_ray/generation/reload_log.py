"""Quiet, honest in-place reloads: drop exactly the vLLM warnings a reload of a complete checkpoint always gives.

vLLM's layer-wise reload warns "<Layer>: Failed to load weights" for every layer that has tensors but got none from
the checkpoint, and puts that layer's existing tensors back. Two such layers are expected with every export:

- ``RotaryEmbedding``: its cos/sin cache is a buffer computed from the config, never stored in a checkpoint;
- ``ParallelLMHead`` when the model ties its output embedding to the input one (SmolLM2, Llama-3.2): the
  checkpoint holds only ``embed_tokens``, and the head *is* that tensor (after a reload it holds the new values;
  checked by the generation tests, whose greedy probe after a broadcast equals transformers on the export).

Any other layer with that warning is a real problem (a weight missing from the export) and is still logged.
"""

from __future__ import annotations

import logging

__all__ = ["ReloadWarningFilter", "install_reload_filter"]

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_MESSAGE = "%s: Failed to load weights"


class ReloadWarningFilter(logging.Filter):
    """Drops the expected "Failed to load weights" warnings and counts what it dropped and let through."""

    def __init__(self, tied_embeddings: bool) -> None:
        super().__init__()
        self.expected = {"RotaryEmbedding"} | ({"ParallelLMHead"} if tied_embeddings else set())
        self.suppressed = 0
        self.passed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _MESSAGE:
            return True
        if record.args and record.args[0] in self.expected:
            self.suppressed += 1
            return False
        self.passed += 1
        return True


def install_reload_filter(tied_embeddings: bool) -> ReloadWarningFilter:
    """Attach a :class:`ReloadWarningFilter` to vLLM's reload logger (once per process) and return it."""
    logger = logging.getLogger(RELOAD_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, ReloadWarningFilter):
            logger.removeFilter(existing)
    found = ReloadWarningFilter(tied_embeddings)
    logger.addFilter(found)
    return found
