"""Real headless Chromium for the browser tests, driven through chromium-driver.

``browser_factory()`` opens one browser with its own fresh profile (so two of
them are two users with separate cookie jars); each is quit at teardown. The
browser is Debian's ``chromium`` and its ``chromium-driver`` (installed by
``./dev setup``), found on PATH or at /usr/bin; nothing is downloaded, and
Selenium's driver manager is not used. Without them the tests skip, except
under ``CI=true``, where a missing browser fails the run instead of passing
it green.

Screenshots go to ``tests/artifacts/browser/`` (gitignored); the path is
printed. ``UPDATE_DEMO_SCREENSHOT=1`` also refreshes ``docs/demo.png``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
# headless, and nothing that reaches out to the internet or needs a GPU
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1100,820",
]


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}")
                                       else None)
        if found:
            return found
    return None


def _missing(what: str) -> NoReturn:
    message = f"{what}; install it with: apt-get install chromium chromium-driver (./dev setup)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Path:
    """A folder for this test's screenshots, under tests/artifacts/browser/."""
    folder = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with capsys.disabled():  # shown whether the test passes or not
        print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture
def browser_factory(tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Any]]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the selenium package is missing (pip install -e '.[test]')")
    chromium = _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver")
    if chromium is None:
        _missing("chromium is not installed")
    if driver_path is None:
        _missing("chromedriver is not installed")
    drivers: list[Any] = []

    def factory() -> Any:
        index = len(drivers) + 1
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / f'profile{index}'}")
        service = Service(executable_path=driver_path,
                          log_output=str(tmp_path / f"chromedriver{index}.log"))
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(30)
        drivers.append(driver)
        return driver

    # Selenium must not try to fetch a driver or a browser (there is no internet)
    monkeypatch.setenv("SE_OFFLINE", "true")
    yield factory
    for driver in drivers:
        try:
            driver.quit()
        except Exception:  # a browser that died must not hide the test's own failure
            pass
