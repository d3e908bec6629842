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
    if isinstance(outcome, harness.HarnessError):
        skip_or_fail(name, outcome)
    assert isinstance(outcome, GuestRun)
    return outcome


def skip_or_fail(name: str, error: harness.HarnessError) -> None:
    """Skip when something the guest ``name`` needs is missing; fail when it is broken.

    In CI (CI=true) nothing may be missing: the Debian kernels come from the registry and the
    PR kernels are built there (KVMPPC_BUILD_PR_KERNEL=1), so a missing piece is a broken
    set-up.  Outside CI a missing PR kernel skips, with the command that builds it.
    """
    if isinstance(error, harness.MissingPrerequisiteError):
        if os.environ.get("CI") == "true" and (
                CONFIGS[name].kernel not in harness.PR_KERNEL_PAGES
                or os.environ.get("KVMPPC_BUILD_PR_KERNEL") == "1"):
            pytest.fail(f"{name}: {error}")
        pytest.skip(f"{name}: {error}")
    pytest.fail(f"{name}: {error}")


@pytest.fixture(scope="session", params=HV_CONFIGS)
def hv_guest(request: pytest.FixtureRequest) -> GuestRun:
    return boot(request.param, request)


@pytest.fixture(scope="session", params=PR_CONFIGS)
def pr_guest(request: pytest.FixtureRequest) -> GuestRun:
    return boot(request.param, request)


@pytest.fixture(scope="session", params=HV_CONFIGS + PR_CONFIGS)
def any_guest(request: pytest.FixtureRequest) -> GuestRun:
    return boot(request.param, request)
