"""BusSettings: defaults, normalisation and the errors that name the fix."""
from __future__ import annotations

import pytest

from cluster.bus.errors import BusConfigurationError
from cluster.bus.settings import BusSettings, driver_only, split_settings


def test_defaults_are_normalised_once() -> None:
    settings = BusSettings(heartbeat_interval=2.0, publish_timeout=1.5)
    assert settings.node_name  # "<hostname>:<pid>"
    assert settings.node_timeout == 6.5 and settings.silence_limit == 6.5
    assert settings.offset_wait == 1.5  # never longer than a publish may take
    assert BusSettings().offset_wait == 2.0


@pytest.mark.parametrize("key", ["buffer_size", "max_batch", "heartbeat_interval",
                                 "publish_timeout", "request_timeout"])
@pytest.mark.parametrize("value", [0, -1, True, "5"])
def test_a_setting_that_is_not_a_positive_number_is_refused(key: str, value: object) -> None:
    with pytest.raises(BusConfigurationError, match=f"{key}=.*positive number"):
        BusSettings(**{key: value})  # type: ignore[arg-type]


def test_a_buffer_smaller_than_one_message_is_refused_with_the_fix() -> None:
    with pytest.raises(BusConfigurationError, match="Raise buffer_bytes or lower"):
        BusSettings(buffer_bytes=1_000, max_message_bytes=2_000)


def test_driver_options_give_up_the_bus_settings_and_keywords_win() -> None:
    driver = {"socket_timeout": 1, "buffer_size": 5, "max_message_bytes": 10}
    merged = split_settings(driver, {"buffer_size": 7})
    assert driver == {"socket_timeout": 1}
    assert merged == {"buffer_size": 7, "max_message_bytes": 10}
    assert driver_only({"buffer_bytes": 1, "password": "x"}) == {"password": "x"}
