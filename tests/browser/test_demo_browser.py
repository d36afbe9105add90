"""The demo as a newcomer meets it: two users in a real headless Chromium.

One :class:`~cluster.devtools.local_cluster.LocalCluster` (what ``./dev up`` runs):
redis-server, 2 nodes serving ``demo.app``, a real Celery worker, HAProxy.
Two browsers with separate profiles log in, their sockets on different
nodes; they see each other online and chat across nodes; one runs a Celery
job that first asks her page to confirm it and waits for the answer (worker
-> page -> worker), and whose progress reaches only her page; then the node
serving one page
is SIGKILLed, and that page comes back on the other node, recovered, with
its user, its rooms and the messages sent while it was away.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from cluster.devtools.local_cluster import LocalCluster, free_port
from demo.client import CLIENT_JS
from tests.browser.conftest import ROOT

WAIT = 25.0


def _wait(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)
                             ).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} not seen within {timeout:g} s; page text:\n"
                             f"{driver.find_element('tag name', 'body').text}") from None


def _text(driver: Any, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _log_lines(driver: Any) -> list[str]:
    return [line for line in _text(driver, "log").splitlines() if line]


def _online(driver: Any) -> dict[str, str]:
    # read in one script: the page replaces the list items on every refresh
    pairs = driver.execute_script(
        "return [...document.querySelectorAll('#online li')]"
        ".map(li => [li.dataset.name, li.querySelector('small').textContent]);")
    return {name: where.removeprefix("on ") for name, where in pairs}


def _login(driver: Any, url: str, name: str) -> str:
    """Sign in as ``name``; return the node serving the page's socket."""
    driver.get(url + "/login")
    field = driver.find_element("id", "name")
    field.clear()
    field.send_keys(name)
    driver.find_element("id", "enter").click()
    _wait(driver, lambda d: _text(d, "state") == "connected", f"{name}'s socket connecting")
    _wait(driver, lambda d: _text(d, "rooms") == "lobby", f"{name} joining the lobby")
    return _wait(driver, lambda d: _text(d, "socket-node") != "?" and _text(d, "socket-node"),
                 f"{name}'s socket node")


def _say(driver: Any, text: str) -> None:
    field = driver.find_element("id", "text")
    field.send_keys(text)
    driver.find_element("id", "say").click()


def _shot(driver: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
    return path


@pytest.fixture
def demo_cluster(tmp_path: Path) -> Any:
    env = {"SECRET_KEY": secrets.token_urlsafe(32),
           "CLUSTER_SIGNING_SECRET": secrets.token_urlsafe(32),
           "CONNECTION_STATE_RECOVERY": "120"}
    cluster = LocalCluster("demo.app:socketio", nodes=2, port=free_port(), worker=True,
                           node_env=env, workdir=tmp_path / "cluster", start_timeout=40.0)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        for process in cluster.processes():  # the logs help when the test failed
            print(f"--- {process.name} ({process.log_path}):\n{process.log_tail(15)}")


@pytest.mark.timeout(240)
def test_two_users_chat_across_nodes_run_a_job_and_survive_a_node_crash(
        demo_cluster: LocalCluster, browser_factory: Callable[[], Any],
        artifacts: Path) -> None:
    url = demo_cluster.url
    alice, bob = browser_factory(), browser_factory()

    # the client script is the npm package's, served by the nodes themselves
    served = requests.get(url + "/static/socket.io.min.js", timeout=5)
    assert served.status_code == 200
    assert served.content == CLIENT_JS.read_bytes()
    alice_node = _login(alice, url, "alice")
    assert alice.execute_script("return typeof io") == "function"
    bob_node = _login(bob, url, "bob")
    for _ in range(8):  # the balancer picks the node; ask again until they differ
        if bob_node != alice_node:
            break
        bob.delete_all_cookies()
        bob_node = _login(bob, url, "bob")
    assert {alice_node, bob_node} == {"node1", "node2"}
    _shot(alice, artifacts, "1-alice-logged-in")

    # each sees the other in the online list, with the node holding its socket
    for page in (alice, bob):
        _wait(page, lambda d: _online(d) == {"alice": alice_node, "bob": bob_node},
              "both users in the online list")
    assert "bob is here (lobby)" in _log_lines(alice)  # the pushed presence event

    # chat across nodes
    _say(alice, "hello from alice")
    _say(bob, "hi alice, bob here")
    expected = ["alice: hello from alice", "bob: hi alice, bob here"]
    for page in (alice, bob):
        _wait(page, lambda d: [ln for ln in _log_lines(d) if ": " in ln] == expected,
              "the two chat lines in order")
    _shot(bob, artifacts, "2-bob-chatting")

    # a Celery job: the worker asks alice's page first and waits for her
    # answer; then alice's bar reaches 100 %, bob's page shows nothing
    steps = alice.find_element("id", "job-steps")
    steps.clear()
    steps.send_keys("5")
    alice.find_element("id", "job-start").click()
    _wait(alice, lambda d: d.find_element("id", "job-confirm").is_displayed(),
          "the worker's question on alice's page")
    assert _text(alice, "job-confirm-steps") == "5"
    assert _text(alice, "job-percent") == "waiting for your confirmation"
    assert alice.find_element("id", "job-bar").get_attribute("value") == "0"  # not started
    assert not bob.find_element("id", "job-confirm").is_displayed()
    _shot(alice, artifacts, "3-alice-confirms-the-job")
    alice.find_element("id", "job-run").click()
    _wait(alice, lambda d: _text(d, "job-percent").startswith("100% done"), "the job's result")
    assert not alice.find_element("id", "job-confirm").is_displayed()
    assert alice.find_element("id", "job-bar").get_attribute("value") == "100"
    assert _text(bob, "job-percent") == "no job yet"
    assert bob.find_element("id", "job-bar").get_attribute("value") == "0"
    _shot(alice, artifacts, "4-alice-job-done")

    # SIGKILL the node serving alice's socket; bob writes while she is away
    victim = next(node for node in demo_cluster.nodes if node.name == alice_node)
    victim.kill(signal.SIGKILL)
    _wait(alice, lambda d: _text(d, "state").startswith("disconnected"), "alice's disconnect",
          timeout=10)
    _say(bob, "while you were away 1")
    _say(bob, "while you were away 2")
    _wait(alice, lambda d: _text(d, "state") == "recovered", "alice's recovered connection",
          timeout=40)
    _wait(alice, lambda d: _text(d, "socket-node") == bob_node, "alice on the surviving node")
    # the same user and rooms, as the server sees them after the recovery
    _wait(alice, lambda d: _text(d, "rooms") == "lobby" and _text(d, "me") == "alice",
          "alice's user and rooms")
    expected += ["bob: while you were away 1", "bob: while you were away 2"]
    _wait(alice, lambda d: [ln for ln in _log_lines(d) if ": " in ln] == expected,
          "the messages sent while alice was away, once each, in order")
    _say(alice, "back on the other node")
    expected.append("alice: back on the other node")
    for page in (alice, bob):
        _wait(page, lambda d: [ln for ln in _log_lines(d) if ": " in ln] == expected,
              "every chat line exactly once")
    _wait(bob, lambda d: _online(d) == {"alice": bob_node, "bob": bob_node},
          "alice listed on the surviving node")
    screenshot = _shot(alice, artifacts, "5-alice-recovered")
    if os.environ.get("UPDATE_DEMO_SCREENSHOT") == "1":  # the README's picture
        shutil.copyfile(screenshot, ROOT / "docs" / "demo.png")
    _shot(bob, artifacts, "6-bob-missed-nothing")
