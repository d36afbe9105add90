"""Resume ids never appear in full in a node's log, even with python-socketio's
and python-engineio's own packet logging switched on (issue 16, part 6)."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

from cluster import Client
from cluster.runner.log_redaction import ResumeIdFilter, install, redact_resume_ids

PID = "AbCdEfGhIjKlMnOpQrStUvWxYz012345"

LOGGING_APP = '''
from flask import Flask
from cluster import SocketIO

app = Flask(__name__)
app.config["SECRET_KEY"] = "log-redaction-test-secret-key"
socketio = SocketIO(app, logger=True, engineio_logger=True,
                    connection_state_recovery={"max_disconnection_duration": 60})


@socketio.on("echo")
def echo(data):
    return data
'''


def test_every_spelling_of_a_pid_is_redacted() -> None:
    for text in (f'0{{"sid":"s1","pid":"{PID}"}}', f"{{'pid': '{PID}', 'offset': '1-0'}}",
                 f'"42[\\"x\\",{{\\"pid\\":\\"{PID}\\"}}]"', f'{{"pid" : "{PID}"}}'):
        redacted = redact_resume_ids(text)
        assert PID not in redacted and PID[:6] + "…" in redacted, text
    assert redact_resume_ids("rapid pid=3 nothing") == "rapid pid=3 nothing"


def test_the_filter_rewrites_records_of_the_servers_loggers() -> None:
    class Server:
        logger = logging.getLogger("test.redaction.sio")

        class eio:  # noqa: N801 - stands for server.eio
            logger = logging.getLogger("test.redaction.eio")

    install(Server)
    install(Server)  # once only
    assert sum(isinstance(f, ResumeIdFilter) for f in Server.logger.filters) == 1
    record = Server.eio.logger.makeRecord("x", logging.INFO, __file__, 1,
                                          "Sending packet %s data %s",
                                          ("MESSAGE", f'0{{"pid":"{PID}"}}'), None)
    assert Server.eio.logger.filters[0].filter(record)
    assert PID not in record.getMessage() and "Sending packet MESSAGE" in record.getMessage()


def test_a_node_with_socketio_logging_on_never_logs_a_full_pid(
        node_factory: Any, sio_client_factory: Any, tmp_path: Path) -> None:
    (tmp_path / "logging_app.py").write_text(LOGGING_APP)
    (node,) = node_factory(app="logging_app:socketio", env={"PYTHONPATH": str(tmp_path)})
    client = sio_client_factory(cls=Client, reconnection_delay=0.1, reconnection_delay_max=0.2)
    client.connect(node.url, auth={}, transports=["polling", "websocket"], wait_timeout=10)
    pid, sid = client.pid(), client.get_sid()
    assert pid and client.call("echo", "hi", timeout=10) == "hi"
    # the node crashes and comes back; so does the client, presenting its pid
    node.kill(signal.SIGKILL)
    node.start()
    deadline = time.monotonic() + 20
    while not (client.connected and client.recovered and client.get_sid() == sid):
        assert time.monotonic() < deadline, "the client did not recover"
        time.sleep(0.05)
    assert client.call("echo", "again", timeout=10) == "again"
    log = node.log_text()  # both runs of the node
    # python-engineio logged the CONNECT reply and the returning CONNECT...
    assert "Sending packet" in log and "Received packet" in log
    assert log.count(pid[:6] + "…") >= 2
    # ...without the resume id
    assert pid not in log
