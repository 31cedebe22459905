"""Shared fixtures: seeded inputs, and the `msloss` command-line tool the bindings are compared with.

Environment:
- MSLOSS_CLI: path of the `msloss` binary (built from this workspace). When set, tests that
  compare with it fail if it is missing; when unset, they look in ../target/{debug,release}
  and are skipped if there is none.
- MSLOSS_REQUIRE_TORCH=1: the torch tests fail, rather than being skipped, without torch.
"""

import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cli_path():
    env = os.environ.get("MSLOSS_CLI")
    if env:
        p = pathlib.Path(env)
        if not p.is_file():
            pytest.fail(f"MSLOSS_CLI={env} does not exist")
        return p
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "msloss"
        if p.is_file():
            return p
    pytest.skip("no msloss binary (set MSLOSS_CLI or build msloss-cli)")


@pytest.fixture(scope="session")
def cli():
    return _cli_path()


def torch_or_skip():
    """Imports torch, or skips (fails under MSLOSS_REQUIRE_TORCH=1)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        if os.environ.get("MSLOSS_REQUIRE_TORCH") == "1":
            pytest.fail("torch is required (MSLOSS_REQUIRE_TORCH=1) but cannot be imported")
        pytest.skip("torch is not installed", allow_module_level=True)
    return torch


def inputs(rng, b, n, c, spatial, dtype, mask=False, probs=False):
    """Seeded scores, image and optional mask: scores (B,N,*spatial), image (B,C,*spatial)."""
    z = rng.normal(0.0, 2.0, size=(b, n, *spatial)).astype(dtype)
    if probs:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        z = (e / e.sum(axis=1, keepdims=True)).astype(dtype)
    x = rng.uniform(0.0, 1.0, size=(b, c, *spatial)).astype(dtype)
    m = (rng.uniform(size=(b, *spatial)) < 0.8).astype(np.uint8) if mask else None
    return z, x, m
