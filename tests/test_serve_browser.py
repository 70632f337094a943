"""The page at `/` in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium with the driver path given, so nothing is downloaded) against a tiny-model server:
the answer streams in and at least one compressed page image appears."""

from __future__ import annotations

import base64
import shutil
import threading

import pytest
from conftest import require_extra

require_extra("fastapi")
uvicorn = require_extra("uvicorn")
# not a project extra (make setup leaves the browser test out): a skip with its reason
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER),
                       reason="needs Debian's chromium and chromedriver: apt-get install -y chromium chromium-driver"),
]


def test_page_streams_the_answer_and_shows_pages(tmp_path):
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from test_serve import free_port, wait_healthy
    from vist2.engine import Engine
    from vist2.generate import load_model
    from vist2.render import Renderer
    from vist2.serve.app import create_app
    from vist2.serve.command import server_limits

    model, tokenizer = load_model(preset_name="tiny")
    app = create_app(Engine(model, tokenizer), tokenizer, Renderer(model.config.render), "tiny", "gcc",
                     server_limits(model, tokenizer, 1000, 1000, 256, 1.0), 8)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,700"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        browser.get(f"http://127.0.0.1:{port}/")
        Select(browser.find_element(By.ID, "mode")).select_by_visible_text("gcc")
        limit = browser.find_element(By.ID, "max")
        limit.clear()
        limit.send_keys("200")
        browser.find_element(By.ID, "noeos").click()  # random weights: run to the full length
        browser.find_element(By.ID, "go").click()
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#pages img"))
        wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("done"))
        images = browser.find_elements(By.CSS_SELECTOR, "#pages img")
        assert len(images) == 3  # 200 tokens, K = 64: three chunks compressed
        assert all(image.get_attribute("naturalWidth") == "128" for image in images)  # tiny's page width
        assert browser.find_element(By.ID, "answer").get_attribute("textContent")
        assert "3 chunks compressed" in browser.find_element(By.ID, "status").text
        assert 0 < int(browser.find_element(By.ID, "kv").text) < int(browser.find_element(By.ID, "full").text)
        shot = tmp_path / "serve_page.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == base64.b64decode("iVBORw0KGgo=")
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=30)
