"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium, for the listening page's
browser test and benchmark. Selenium is imported only when a browser is started."""

from __future__ import annotations

import os
import shutil

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) executables, from $CHROMIUM / $CHROMEDRIVER or the PATH; None when either is missing."""
    browser = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_chromium(browser: str, driver: str, width: int = 1100, height: int = 900):
    """A headless ``selenium.webdriver.Chrome`` on the given executables (no download, no network)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-background-networking", "--no-first-run",
                "--disable-extensions", "--disable-component-update"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
