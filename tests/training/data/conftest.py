"""Shared fixtures: the real official annotation files (read-only, at ../shared next to the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "training").is_dir():
            return parent
    return here.parents[3]


META_DIR = (_repo_root() / ".." / "shared" / "fixtures" / "official-metadata").resolve()


@pytest.fixture(scope="session")
def meta() -> Path:
    if not META_DIR.is_dir():
        pytest.skip(f"official metadata fixtures not found at {META_DIR} (expected ../shared next to the repo)")
    return META_DIR


@pytest.fixture(scope="session")
def vggss(meta):
    from training.data import parse_vggss_json

    return parse_vggss_json(meta / "ezvsl_vggss.json")


@pytest.fixture(scope="session")
def vggss_raw(meta):
    import json

    return json.loads((meta / "ezvsl_vggss.json").read_text())
