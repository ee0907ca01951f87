"""Shared pytest setup: hypothesis profiles and the model zoo fixture.

HYPOTHESIS_PROFILE=dev runs more examples locally; the default ``ci`` profile is derandomized
so every CI run tries the same examples. Fixtures of one area live in that area's test files.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def zoo():
    """The zoo module (``tests/zoo.py``): ``zoo.export(name)``, ``zoo.sample_input(name)``, ..."""
    import zoo as zoo_module  # torch is imported lazily: only tests that use the zoo pay for it

    return zoo_module
