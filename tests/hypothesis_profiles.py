"""Hypothesis settings profiles of the test suite, chosen by ``MPLOADER_HYPOTHESIS_PROFILE``.

- ``ci`` (the default): derandomized, so every run tries the same examples, with Hypothesis's
  usual 100 examples per test and no example database.
- ``fuzz``: 20 times as many examples, random, for long runs (``tox -e fuzz``).

A test's ``@given`` takes the settings that are current when its module is imported, so every
module that uses Hypothesis imports this one first. Tests whose examples are expensive ask for a
number of examples through :func:`scaled_examples`, which grows with the profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "MPLOADER_HYPOTHESIS_PROFILE"
DEFAULT_PROFILE = "ci"
_CI_EXAMPLES = 100

settings.register_profile(
    "ci", derandomize=True, max_examples=_CI_EXAMPLES, deadline=None, database=None, print_blob=True
)
settings.register_profile(
    "fuzz",
    max_examples=20 * _CI_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_requested = os.environ.get(PROFILE_ENV, "")
if _requested and _requested not in ("ci", "fuzz"):
    raise ValueError(f"{PROFILE_ENV}={_requested!r} names no profile; set it to ci or fuzz, or unset it")
if _requested or settings.get_current_profile_name() == "default":
    # An explicit --hypothesis-profile option is kept unless the variable is set.
    settings.load_profile(_requested or DEFAULT_PROFILE)


def scaled_examples(ci_examples: int) -> int:
    """Return ``ci_examples`` under the ``ci`` profile, and proportionally more under ``fuzz``."""
    current = settings.get_profile(settings.get_current_profile_name())
    return max(1, ci_examples * current.max_examples // _CI_EXAMPLES)
