"""The chat page of `mmllm serve` in headless Chromium (Debian's chromium + chromedriver, driven by selenium):
pick an image, ask, wait for the streamed answer, keep the conversation, reset; a screenshot is kept in
test-artifacts/ for people to look at."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from commands import REPO, start_server

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def server(sharp):
    process, url = start_server("--model", sharp[0])
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/setup installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=900,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_uploads_an_image_asks_and_streams_the_answer(server, browser, trained, sharp):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text == "model")
    browser.find_element(By.ID, "file").send_keys(str(trained.image))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "preview").is_displayed())
    browser.find_element(By.ID, "question").send_keys("Describe the image.")
    browser.find_element(By.ID, "send").click()
    done = "#log .assistant[data-state='done'], #log .error"
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, done))
    answers = browser.find_elements(By.CSS_SELECTOR, "#log .assistant")
    assert len(answers) == 1 and not browser.find_elements(By.CSS_SELECTOR, "#log .error")
    expected = sharp[1].caption(trained.image, max_new_tokens=128)
    assert expected and answers[0].text.split() == expected.split()
    assert browser.find_elements(By.CSS_SELECTOR, "#log .user img")  # the question shows its image

    # A follow-up keeps the conversation (two turns shown); Reset empties it.
    browser.find_element(By.ID, "question").send_keys("And the colours?")
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log [data-state='done'], #log .error")) == 2)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#log .user")) == 2
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "serve-page.png"
    browser.save_screenshot(str(screenshot))
    assert Path(screenshot).stat().st_size > 1000
    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#log .turn") == []
