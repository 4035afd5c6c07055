"""Hypothesis profiles for the property tests of the parsers (tests/fuzz).

``ci`` (the default) keeps ``make test`` quick; ``long`` (``HYPOTHESIS_PROFILE=long``,
used by ``make fuzz``) runs many more examples. No deadline: shared machines stall.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
