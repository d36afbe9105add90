"""Background tasks and serving of the extension.

``start_background_task``, ``start_singleton_task`` and ``sleep`` run in the
server's async mode; ``run``, ``drain`` and ``stop`` hand the extension to
:mod:`cluster.runner.serve`; ``test_client`` builds the in-process client of
:mod:`cluster.flask_integration.testing`. :class:`cluster.SocketIO`'s methods
of those names delegate to one :class:`TasksAndServing`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.flask_integration.singleton_tasks import check_lease

if TYPE_CHECKING:
    import flask

    from cluster.flask_integration.extension import SocketIO
    from cluster.flask_integration.singleton_tasks import SingletonTask
    from cluster.flask_integration.testing import SocketIOTestClient
    from cluster.node.server import ClusterServer
    from cluster.runner.health import NodeState

__all__ = ["TasksAndServing"]


class TasksAndServing:
    """Tasks and serving of one extension.

    :param server: returns the server in use (tasks need ``init_app`` first).
    :param app: returns the application ``run`` serves when given none.
    :param node_state: the node's readiness, which a singleton task's lease
        follows.
    :param extension: what is served: :mod:`cluster.runner.serve` and the
        test client take the whole extension.
    """

    def __init__(self, server: Callable[[], ClusterServer], app: Callable[[], flask.Flask | None],
                 node_state: NodeState, extension: SocketIO) -> None:
        self._server = server
        self._app = app
        self._node_state = node_state
        self._extension = extension

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._server().start_background_task(target, *args, **kwargs)

    def start_singleton_task(self, name: str, target: Callable[..., Any], *args: Any,
                             lease_seconds: float = 5.0, redis_url: str | None = None,
                             **kwargs: Any) -> SingletonTask:
        from cluster.flask_integration.singleton_tasks import SingletonTask

        return SingletonTask(self._server(), self._node_state, name, target, args, kwargs,
                             lease_seconds=lease_seconds, redis_url=redis_url)

    def sleep(self, seconds: float = 0) -> None:
        # a singleton task that lost its lease stops at its next sleep
        check_lease()
        self._server().sleep(seconds)
        check_lease()

    def run(self, app: flask.Flask | None = None, host: str | None = None,
            port: int | None = None, **kwargs: Any) -> None:
        from cluster.runner.serve import run_app

        run_app(self._extension, app or self._app(), host=host, port=port, **kwargs)

    def drain(self, grace_seconds: float = 10.0) -> None:
        from cluster.runner.serve import drain_node

        drain_node(self._extension, grace_seconds)

    def stop(self) -> None:
        from cluster.runner.serve import stop_app

        stop_app(self._extension)

    def test_client(self, app: flask.Flask, namespace: str | None = None,
                    query_string: str | None = None, headers: dict[str, str] | None = None,
                    auth: dict[str, Any] | None = None,
                    flask_test_client: Any = None) -> SocketIOTestClient:
        from cluster.flask_integration.testing import SocketIOTestClient

        return SocketIOTestClient(
            app, self._extension, namespace=namespace, query_string=query_string,
            headers=headers, auth=auth, flask_test_client=flask_test_client,
        )
