"""Shared hypothesis profiles for the property-test suites.

``default`` keeps every property suite fast enough for CI; set
``LLMDBG_HYPOTHESIS_PROFILE=thorough`` for a long, deeper run.
"""

from __future__ import annotations

import contextlib
import os
import warnings

from hypothesis import settings

settings.register_profile("default", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("LLMDBG_HYPOTHESIS_PROFILE", "default"))

# When a test fails, hypothesis imports libcst to suggest a patch; that import warns
# (mypy_extensions.TypedDict), and filterwarnings = error then turns the failure report into an
# INTERNALERROR that hides the falsifying example. Import it once here with warnings silenced.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore")
    import hypothesis.extra._patching  # noqa: F401
