"""Fixtures of the devtools tests: the stand-in node (:mod:`tests.devtools.fake_node`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.devtools.processes import NodeProcess
from tests.devtools.fake_node import install


@pytest.fixture(scope="module")
def fake_node_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding the ``fakenode`` package, for PYTHONPATH."""
    return install(tmp_path_factory.mktemp("fakenode"))


@pytest.fixture
def fake_nodes(
    fake_node_path: str, tmp_path: Path
) -> Iterator[Callable[..., list[NodeProcess]]]:
    """Start stand-in nodes: ``fake_nodes(count, app, **NodeProcess keywords)``."""
    started: list[NodeProcess] = []

    def start(count: int = 2, app: str = "demo", **kwargs: object) -> list[NodeProcess]:
        nodes = []
        for _ in range(count):
            name = f"node{len(started) + 1}"
            node = NodeProcess(
                app, name=name, module="fakenode", env={"PYTHONPATH": fake_node_path},
                log_path=tmp_path / f"{name}.log", **kwargs,  # type: ignore[arg-type]
            )  # fmt: skip
            started.append(node)
            nodes.append(node.start())
        return nodes

    yield start
    for node in started:
        node.stop(grace=2)
