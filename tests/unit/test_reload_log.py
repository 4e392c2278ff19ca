"""Only the expected "Failed to load weights" warnings of an in-place reload are dropped."""

from __future__ import annotations

import logging

import pytest

from sppo_ray.generation.reload_log import RELOAD_LOGGER, install_reload_filter

pytestmark = pytest.mark.unit


def _warn(layer: str) -> None:
    logging.getLogger(RELOAD_LOGGER).warning("%s: Failed to load weights", layer)


def test_expected_layers_are_dropped_and_others_logged(caplog):
    counts = install_reload_filter(tied_embeddings=True)
    with caplog.at_level(logging.WARNING, logger=RELOAD_LOGGER):
        for layer in ("RotaryEmbedding", "ParallelLMHead", "QKVParallelLinear"):
            _warn(layer)
        logging.getLogger(RELOAD_LOGGER).warning("Reloading weights inplace...")
    assert [r.getMessage() for r in caplog.records] == ["QKVParallelLinear: Failed to load weights",
                                                        "Reloading weights inplace..."]
    assert (counts.suppressed, counts.passed) == (2, 1)


def test_an_untied_head_that_got_no_weights_is_a_real_warning(caplog):
    counts = install_reload_filter(tied_embeddings=False)
    with caplog.at_level(logging.WARNING, logger=RELOAD_LOGGER):
        _warn("ParallelLMHead")
        _warn("RotaryEmbedding")
    assert [r.getMessage() for r in caplog.records] == ["ParallelLMHead: Failed to load weights"]
    assert len(logging.getLogger(RELOAD_LOGGER).filters) == 1  # installing again replaced the old filter
    assert (counts.suppressed, counts.passed) == (1, 1)
