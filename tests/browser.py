"""A real headless browser for the UI tests: Debian's chromium driven by selenium through Debian's
chromedriver (`make test` installs both when missing; nothing is downloaded at run time).

Pages are read as a user reads them: the rendered text once the given strings appear, plus a
screenshot kept under tests/.artifacts/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

ARTIFACTS = Path(__file__).parent / ".artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# as the machine notes say: without the background-networking flags chromium keeps dialling out
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1600,1000")


# one reading step: every scrollable box moves down by half its height (long tables render rows as they come into view)
SCROLL_STEP = ("document.querySelectorAll('*').forEach(e => { if (e.scrollHeight > e.clientHeight + 10) "
               "e.scrollTop = e.scrollTop + Math.max(100, e.clientHeight / 2); }); window.scrollBy(0, 400);")


@contextmanager
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromedriver are missing: `make test` installs Debian's packages (make browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def rendered_text(driver, url: str, must_show: list[str], screenshot: str, timeout_s: float = 60) -> str:
    """Open ``url`` and read it down, as a reader scrolls, until every string of ``must_show`` has been on the
    screen (or time out); returns everything read, and saves a screenshot."""
    driver.get(url)
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text += "\n" + driver.find_element("tag name", "body").text
        if all(s in text for s in must_show):
            break
        driver.execute_script(SCROLL_STEP)
        time.sleep(0.5)
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / screenshot))
    return text


@contextmanager
def mlflow_ui(store: str, port: int):
    """The MLflow UI a user starts on a store (the command the demo prints), until the block ends."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        yield url
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
