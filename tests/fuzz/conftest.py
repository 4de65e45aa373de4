"""Fuzzing budget. `make fuzz` sets SOLENT_FUZZ_EXAMPLES (default 40000 per target there, which
adds up to more than 100,000 generated inputs); the normal suite runs a short pass."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

BUDGET = int(os.environ.get("SOLENT_FUZZ_EXAMPLES", "800"))


def fuzz_settings(share: float = 1.0) -> settings:
    """Hypothesis settings for one target, with ``share`` of the per-target budget."""
    return settings(
        max_examples=max(10, int(BUDGET * share)),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
