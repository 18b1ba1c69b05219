"""The suite's own set-up for side-by-side workers (pytest-xdist, pyproject.toml): each worker its own
Redis database, and the files with long tests handed out first."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import pytest_collection_modifyitems, worker_database


def test_each_worker_gets_its_own_redis_database():
    url = "redis://127.0.0.1:6390/0"
    assert worker_database(url, None) == url  # not under xdist
    assert worker_database(url, "master") == url
    assert [worker_database(url, f"gw{i}") for i in range(3)] == [
        "redis://127.0.0.1:6390/0",
        "redis://127.0.0.1:6390/1",
        "redis://127.0.0.1:6390/2",
    ]
    assert worker_database("redis://:pw@h:1/3", "gw2") == "redis://:pw@h:1/5"
    assert worker_database("redis://h:1", "gw1") == "redis://h:1/1"
    with pytest.raises(RuntimeError, match="16 databases"):
        worker_database(url, "gw16")


class _Item:
    def __init__(self, path: str, name: str, slow: bool = False):
        self.path, self.name, self.slow = Path(path), name, slow

    def get_closest_marker(self, name: str):
        return object() if name == "slow" and self.slow else None


def test_files_with_slow_tests_are_collected_first():
    items = [
        _Item("a.py", "a1"),
        _Item("b.py", "b1"),
        _Item("b.py", "b2", slow=True),
        _Item("c.py", "c1"),
        _Item("d.py", "d1", slow=True),
        _Item("d.py", "d2"),
    ]
    pytest_collection_modifyitems(None, items)
    # the files holding a slow test first, each file's tests together and in their order
    assert [i.name for i in items] == ["b1", "b2", "d1", "d2", "a1", "c1"]
