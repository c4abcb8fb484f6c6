"""The operator page (`GET /ui`) in a real headless browser: Debian's chromium driven by
Selenium (scripts/test.sh installs both), against a real server on 127.0.0.1 with a few
decisions and feedback. The RM table shows the RMs, a decision opens with its candidates and
scores, and the data needs the key when one is set.

`LASER_UI_SCREENSHOT=docs/ui.png` keeps the screenshot (the README shows one taken so)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TEACHES, make_settings

SECRET = "ui-test-key-0123456789abcdef"
KEY = {"Authorization": f"Bearer {SECRET}"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def test_ui_shows_rms_and_decisions_and_needs_the_key(start_server: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert CHROMIUM and DRIVER, "chromium and chromedriver: scripts/test.sh installs them"
    bandit = {"observe_ms_per_candidate": 5.0}  # the cheap RMs' scores show for every decision
    live = start_server(make_settings(tmp_path, api_key=SECRET, bandit=bandit))
    browser = None
    try:
        with httpx.Client(base_url=live.url, timeout=120) as c:
            page = c.get("/ui")  # the page shell is open: it holds no data
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "default-src 'self'" in page.headers["content-security-policy"]
            prompts = ["What is 6 + 7?", "Ana has 3 pens and buys 4 more. How many pens?"]
            ids = []
            for p in prompts * 2:
                r = c.post("/generate", json={"prompt": p, **TEACHES, "max_tokens": 12})
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])
            for i, decision_id in enumerate(ids[:3]):
                c.post("/feedback", json={"id": decision_id, "reward": i % 2}, headers=KEY)
            rms = list(c.get("/admin/reward-models", headers=KEY).json())

        browser = _browser()
        wait = WebDriverWait(browser, 120)  # a loaded 2-core machine starts chromium slowly
        browser.get(live.url + "/ui")
        # Without the key the data calls are refused and the page says so.
        wait.until(ec.text_to_be_present_in_element((By.ID, "error"), "API key"))
        assert browser.find_element(By.ID, "status").text == "locked"
        assert not browser.find_elements(By.CSS_SELECTOR, "#rms tbody tr")

        browser.find_element(By.ID, "key").send_keys(SECRET)
        browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#rms tbody tr")) == len(rms))
        shown = [
            r.get_attribute("data-rm")
            for r in browser.find_elements(By.CSS_SELECTOR, "#rms tbody tr")
        ]
        assert sorted(shown) == sorted(rms)
        assert "math: E[r]" in browser.find_element(By.CSS_SELECTOR, "#rms thead").text
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#decisions tbody tr")) == 4)
        assert browser.find_element(By.ID, "status").text == "live"

        # A decision opens with every candidate and every RM's scores, the chosen one marked.
        browser.find_element(By.CSS_SELECTOR, f'#decisions tr[data-id="{ids[1]}"]').click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#candidates tbody tr"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")
        assert len(rows) == TEACHES["n"]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr.chosen")) == 1
        header = browser.find_element(By.CSS_SELECTOR, "#candidates thead").text
        assert sum(rm in header for rm in rms) >= 3  # the cheap RMs scored it too
        detail = browser.find_element(By.ID, "detail").text
        assert ids[1] in detail and "stages: prepare" in detail

        # Filters: only decisions with feedback.
        from selenium.webdriver.support.ui import Select

        Select(browser.find_element(By.ID, "f-feedback")).select_by_value("yes")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#decisions tbody tr")) == 3)
        shot = tmp_path / "ui.png"
        browser.save_screenshot(str(shot))
        keep = os.environ.get("LASER_UI_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)
    finally:
        if browser is not None:
            browser.quit()
        live.stop()
