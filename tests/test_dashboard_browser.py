"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver, which `make test`
installs) driven by Selenium opens the page the real function_app serves through the local host, after a
main-job-like run on Azurite (tests/_dashboard_run.py), reads the figures shown, compares them with the
stores, uses the car lookup form, and takes the screenshot the README shows.

Selenium is handed /usr/bin/chromedriver and /usr/bin/chromium, so selenium-manager never runs (it would
download a driver); the browser runs offline with a fresh profile. `UPDATE_SCREENSHOT=1` copies the
screenshot to docs/dashboard.png.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from _dashboard_run import BAD_EVENTS, CARS, MONITORED_DAYS, main_job_like_run, write_monitor_history
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from shared.adapters.alert_store import list_alerts
from shared.adapters.archive import list_dead_letters
from shared.config.names import ALERTS_TABLE
from shared.devtools.azurite import PROJECT_ROOT
from shared.devtools.http_gateway import serving_http_functions

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900"]  # fmt: skip
SCREENSHOT = PROJECT_ROOT / "docs" / "dashboard.png"
PAGE_LOAD_S = 30  # the longest a page may take to load before the test fails (a bound, not a wait)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="make test installs chromium"),
]


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_S)
    try:
        yield driver
    finally:
        driver.quit()


def shown(driver, metric: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'[data-metric="{metric}"]').text


def full_page_png(driver) -> bytes:
    """The whole page as PNG, not only the window (Chromium's DevTools capture beyond the viewport)."""
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    capture = {"format": "png", "captureBeyondViewport": True,
               "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}  # fmt: skip
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", capture)
    return base64.b64decode(shot["data"])


def test_the_dashboard_in_chromium_shows_the_stores_figures_and_looks_up_a_car(harness, browser, tmp_path):
    main_job_like_run(harness)
    write_monitor_history(harness.services.blobs)
    table = harness.services.tables.get_table_client(ALERTS_TABLE)
    alerts = {car: list_alerts(table, car) for car in CARS["Car_ID"]}
    states = Counter(alert["state"] for car_alerts in alerts.values() for alert in car_alerts)

    with serving_http_functions(harness.host) as api:
        browser.get(f"{api}dashboard")

        assert browser.title == "Battery alerting: operations dashboard"
        assert int(shown(browser, "delivered")) == states["delivered"] > 0
        assert int(shown(browser, "suppressed")) == states["suppressed"] > 0
        assert int(shown(browser, "alerts-total")) == sum(states.values())
        assert int(shown(browser, "dead_lettered")) == len(list_dead_letters(harness.services.blobs)) == len(BAD_EVENTS)
        assert int(shown(browser, "poisoned")) == 1
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")  # the charts were drawn
        last = MONITORED_DAYS[-1].scored_on
        assert last in browser.find_element(By.ID, "models").text  # the champion's last matured day
        # Offline: the page loaded nothing besides itself (no script, style sheet, font or image).
        assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []
        screenshot = tmp_path / "dashboard.png"
        screenshot.write_bytes(full_page_png(browser))

        lookup = browser.find_element(By.ID, "car")
        lookup.send_keys("CAR-PAST")
        lookup.submit()
        WebDriverWait(browser, PAGE_LOAD_S).until(expected_conditions.title_is("Car CAR-PAST"))

        assert int(shown(browser, "car-alerts")) == len(alerts["CAR-PAST"]) >= 2
        assert int(shown(browser, "car-telemetry-days")) == 14
        assert float(shown(browser, "car-probability")) > 0.8

        browser.find_element(By.ID, "car").clear()
        browser.find_element(By.ID, "car").send_keys("CAR-NOBODY")
        browser.find_element(By.ID, "car").submit()
        WebDriverWait(browser, PAGE_LOAD_S).until(expected_conditions.title_is("Car CAR-NOBODY: not found"))
        assert "No car CAR-NOBODY is known" in shown(browser, "unknown-car")

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, SCREENSHOT)
