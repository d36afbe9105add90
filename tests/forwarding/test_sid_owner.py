"""Owner-naming sids and the forwarding header, without processes."""

from __future__ import annotations

import time

import pytest

from cluster.bus.services.nodes import NodeRegistry
from cluster.node import forwarding, forwarding_setup
from cluster.node.forwarding import ForwardSigner
from cluster.node.sid_owner import SID_LENGTH, SidMinter

SECRET = "a-test-signing-secret-of-some-length"
HOST = "0123456789abcdef0123456789abcdef"


def test_a_minted_sid_names_its_node_and_only_its_cluster_reads_it() -> None:
    minter = SidMinter(HOST, SECRET)
    sid = minter.mint("x" * 20)
    assert len(sid) == SID_LENGTH and sid.startswith("01234567")
    assert SidMinter("f" * 32, SECRET).owner_tag(sid) == "01234567"  # any node reads it
    assert SidMinter(HOST, "another-secret-of-some-length").owner_tag(sid) is None
    tampered = "f" + sid[1:]  # another node's tag, the same MAC
    assert minter.owner_tag(tampered) is None
    assert minter.owner_tag(sid[:-1]) is None and minter.owner_tag("") is None
    assert minter.mint("x" * 20) == sid  # deterministic around the random part


def test_the_registry_finds_a_live_owner_by_tag() -> None:
    nodes = NodeRegistry(HOST, "me", node_timeout=5)
    nodes.set_own_url("http://10.0.0.1:5000")
    nodes.seen("89abcdef" + "0" * 24, "peer", "http://10.0.0.2:5000")
    assert nodes.url_for_tag("89abcdef") == ("89abcdef" + "0" * 24, "http://10.0.0.2:5000")
    assert nodes.url_for_tag("01234567") == (HOST, "http://10.0.0.1:5000")
    assert nodes.url_for_tag("deadbeef") is None
    nodes.remove("89abcdef" + "0" * 24)
    assert nodes.url_for_tag("89abcdef") is None


def test_the_forwarding_header_binds_request_origin_and_client() -> None:
    signer = ForwardSigner(SECRET)
    value = signer.sign("POST", "/socket.io/?sid=x", "01234567", "192.0.2.7")
    assert signer.verify(value, "POST", "/socket.io/?sid=x") == "192.0.2.7"
    assert signer.verify(value, "GET", "/socket.io/?sid=x") is None
    assert signer.verify(value, "POST", "/socket.io/?sid=y") is None
    assert signer.verify(value.replace("192.0.2.7", "10.0.0.1"), "POST",
                         "/socket.io/?sid=x") is None
    assert ForwardSigner("another-secret-of-some-length").verify(
        value, "POST", "/socket.io/?sid=x") is None
    assert signer.verify("v1;garbage", "POST", "/socket.io/?sid=x") is None


def test_an_old_forwarding_header_is_refused() -> None:
    signer = ForwardSigner(SECRET)
    value = signer.sign("GET", "/t", "01234567", "")
    later = time.time() + forwarding.MAX_HEADER_AGE + 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(forwarding.time, "time", lambda: later)
        assert signer.verify(value, "GET", "/t") is None


def test_a_wildcard_bind_advertises_a_reachable_address() -> None:
    assert forwarding_setup.default_advertise_url("127.0.0.1", 5000) == "http://127.0.0.1:5000"
    url = forwarding_setup.default_advertise_url("0.0.0.0", 5000)
    assert url.startswith("http://") and "0.0.0.0" not in url and url.endswith(":5000")
