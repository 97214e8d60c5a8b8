"""Shared hypothesis profiles for the property-test suites.

``default`` keeps every property suite fast enough for CI; set
``LLMDBG_HYPOTHESIS_PROFILE=thorough`` for a long, deeper run.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("default", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("LLMDBG_HYPOTHESIS_PROFILE", "default"))
