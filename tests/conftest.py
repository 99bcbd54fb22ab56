"""Every test runs offline, with its own empty data root and decode cache."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("TRANSFERKIT_DATA", str(tmp_path_factory.mktemp("empty-root")))


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip("the offline mirror ../shared/data is not present")
    return SHARED_DATA.resolve()
