"""Fixtures shared by the test modules: the POWER guests, each booted once per session."""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.powerguest import harness
from tests.powerguest.harness import CONFIGS, GuestRun

HV_CONFIGS = [name for name, config in CONFIGS.items() if config.kind == "hv"]
PR_CONFIGS = [name for name, config in CONFIGS.items() if config.kind == "pr"]


def boot(name: str, request: pytest.FixtureRequest | None = None) -> GuestRun:
    """The session's one boot of ``name``: skip if a prerequisite is missing, fail if broken.

    Given the fixture's ``request``, the harness's progress (downloads, image builds, the PR
    kernel build) shows on the terminal as it happens instead of being captured.
    """
    capture = request.config.pluginmanager.getplugin("capturemanager") if request else None
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        outcome = harness.session_run(name)
    if isinstance(outcome, harness.MissingPrerequisiteError):
        # In CI (CI=true) the HV guests need nothing but what scripts/setup-system.sh
        # installs, so a missing piece there is a broken set-up, not a reason to skip.
        if os.environ.get("CI") == "true" and CONFIGS[name].kernel == "debian":
            pytest.fail(f"{name}: {outcome}")
        pytest.skip(f"{name}: {outcome}")
    if isinstance(outcome, harness.HarnessError):
        pytest.fail(f"{name}: {outcome}")
    return outcome


@pytest.fixture(scope="session", params=HV_CONFIGS)
def hv_guest(request: pytest.FixtureRequest) -> GuestRun:
    return boot(request.param, request)


@pytest.fixture(scope="session", params=PR_CONFIGS)
def pr_guest(request: pytest.FixtureRequest) -> GuestRun:
    return boot(request.param, request)


@pytest.fixture(scope="session", params=HV_CONFIGS + PR_CONFIGS)
def any_guest(request: pytest.FixtureRequest) -> GuestRun:
    return boot(request.param, request)
