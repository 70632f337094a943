"""A screenshot of `vist2 serve`'s page answering one gcc prompt (needs Debian's chromium and
chromedriver, and the `browser` extra). The screenshots in docs/:

    PYTHONPATH=src python scripts/serve_screenshot.py docs/serve_page_smollm2.png --preset smollm2-135m
    PYTHONPATH=src python scripts/serve_screenshot.py docs/serve_page.png --preset tiny --ignore-eos
    PYTHONPATH=src python scripts/serve_screenshot.py docs/serve_page_narrow.png --preset tiny --ignore-eos \
        --window 420,1500
"""

import argparse
import shutil
import subprocess
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from vist2.serve.health import free_port, wait_healthy

parser = argparse.ArgumentParser(description="screenshot of the serve page after one gcc answer")
parser.add_argument("png", help="where to save the screenshot")
parser.add_argument("--preset", default="smollm2-135m")
parser.add_argument("--tokens", type=int, default=300)
parser.add_argument("--ignore-eos", action="store_true", help="tick the page's 'ignore end of text'")
parser.add_argument("--window", default="1100,1000", help="browser window WIDTH,HEIGHT in pixels")
parser.add_argument("--prompt", default="Write a short story about a lighthouse keeper who finds a message in a bottle.")
args = parser.parse_args()
port = free_port()
server = subprocess.Popen([sys.executable, "-m", "vist2", "serve", "--preset", args.preset, "--dtype", "bfloat16",
                           "--port", str(port), "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    wait_healthy(f"http://127.0.0.1:{port}", 120, server)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.window}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        prompt = browser.find_element(By.TAG_NAME, "textarea")
        prompt.clear()
        prompt.send_keys(args.prompt)
        Select(browser.find_element(By.ID, "mode")).select_by_visible_text("gcc")
        limit = browser.find_element(By.ID, "max")
        limit.clear()
        limit.send_keys(str(args.tokens))
        if args.ignore_eos:
            browser.find_element(By.ID, "noeos").click()
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 240).until(lambda b: b.find_element(By.ID, "status").text.startswith("done"))
        print(browser.find_element(By.ID, "status").text)
        browser.save_screenshot(args.png)
    finally:
        browser.quit()
finally:
    server.terminate()
    server.wait(timeout=30)
