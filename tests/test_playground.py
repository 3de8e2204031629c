"""The playground at `/`, used in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by Selenium): type a prompt, press Generate, watch the text arrive.
The page loads nothing from outside the server. A screenshot is kept in `test-artifacts/`."""

import os
import shutil
import subprocess

import pytest
from mlflow_helpers import OurServer, post_json, tiny_model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "test-artifacts")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    model_dir = tiny_model_dir(str(root / "playground-model"), n_ctx=64, n_embd=32, n_layer=2)
    s = OurServer(model_dir, str(root), ["--max-batch-size", "2"])
    yield s
    s.stop()


def make_browser():
    """A headless Chromium driven by Selenium (tests/test_serving_access.py uses one too)."""
    # The set-up the README documents: Debian's packages, installed by tools/install-browser.sh.
    subprocess.run([os.path.join(ROOT, "tools", "install-browser.sh")], check=True)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))


@pytest.fixture(scope="module")
def browser():
    driver = make_browser()
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def test_type_a_prompt_press_generate_and_see_the_text(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
    wait_for(browser, lambda d: by_id("model-version").text == "local")
    assert by_id("model-name").text == "playground-model"
    by_id("prompt").send_keys("The meaning of life is")
    for name, value in (("temperature", "0"), ("max_tokens", "12")):
        by_id(name).clear()
        by_id(name).send_keys(value)
    by_id("generate").click()
    wait_for(browser, lambda d: by_id("status").text.startswith("done"))
    os.makedirs(ARTIFACTS, exist_ok=True)
    browser.save_screenshot(os.path.join(ARTIFACTS, "playground.png"))

    shown = by_id("completion").text
    _, expected = post_json(server.url + "/v1/completions",
                            {"prompt": "The meaning of life is", "max_tokens": 12, "temperature": 0, "top_k": 40})
    assert shown.strip() and shown.strip() == expected["choices"][0]["text"].strip()
    assert "12 tokens" in by_id("status").text or "(stop)" in by_id("status").text
    # Everything the page used came from this server (no CDN).
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(server.url) for u in urls), urls


def test_bad_settings_show_the_servers_reason(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
    wait_for(browser, lambda d: by_id("model-version").text == "local")
    by_id("max_tokens").clear()
    by_id("max_tokens").send_keys("500")
    by_id("generate").click()
    wait_for(browser, lambda d: by_id("status").text.startswith("error"))
    assert "max_tokens = 500" in by_id("status").text and "context of 64" in by_id("status").text


def test_docs_list_the_endpoints_offline(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/docs")
    wait_for(browser, lambda d: "POST /v1/completions" in d.find_element(By.ID, "endpoints").text)


def in_view(browser, element) -> bool:
    return browser.execute_script("const r = arguments[0].getBoundingClientRect();"
                                  "return r.top >= 0 && r.bottom <= window.innerHeight && r.height > 0;", element)


def test_the_page_turns_ready_by_itself_and_top_p_returns_to_1(server, browser):
    """Opened while the model cannot be listed, the page says "not ready", then "ready" once it
    can (no button pressed); top-p steps back up to 1; the icon is served."""
    import urllib.request

    from selenium.webdriver.common.by import By

    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/v1/models"]})
    try:
        browser.get(server.url + "/")
        wait_for(browser, lambda d: "not ready" in by_id("status").text)
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    wait_for(browser, lambda d: by_id("status").text == "ready", timeout=15)
    top_p = by_id("top_p")
    top_p.clear()
    top_p.send_keys("0.9")
    browser.execute_script("arguments[0].stepUp(); arguments[0].stepUp(); arguments[0].stepUp();", top_p)
    assert top_p.get_attribute("value") == "1"
    assert browser.execute_script("return arguments[0].checkValidity();", top_p)
    with urllib.request.urlopen(server.url + "/favicon.ico", timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/x-icon" and r.read(4) == b"\0\0\1\0"


def test_an_error_shows_in_view_and_a_completion_can_be_rated(server, browser):
    """A prompt too long for the context: the reason shows next to the button, not below the
    prompt. Then a completion rated thumbs up with a corrected text reaches the feedback store."""
    from selenium.webdriver.common.by import By

    from tfx_gpt2.feedback.store import SqliteStore

    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
    browser.get(server.url + "/")
    wait_for(browser, lambda d: by_id("model-version").text == "local")
    browser.execute_script("arguments[0].value = arguments[1];", by_id("prompt"), "many words " * 700)
    by_id("generate").click()
    wait_for(browser, lambda d: by_id("status").text.startswith("error"))
    assert "context of 64" in by_id("status").text and in_view(browser, by_id("status")), by_id("status").text
    assert by_id("rate").get_attribute("hidden") is not None

    browser.execute_script("arguments[0].value = 'Rate this';", by_id("prompt"))
    for name, value in (("temperature", "0"), ("max_tokens", "6")):
        by_id(name).clear()
        by_id(name).send_keys(value)
    by_id("generate").click()
    wait_for(browser, lambda d: by_id("status").text.startswith("done"))
    assert by_id("rate").is_displayed()
    by_id("corrected").send_keys(" a better ending")
    by_id("thumbs-up").click()
    wait_for(browser, lambda d: by_id("rate-status").text.startswith("thank you"))
    assert by_id("rate-status").text == "thank you: recorded"
    completion_id = browser.execute_script("return completionId;")
    (_, feedback), = SqliteStore(os.path.join(server.feedback_dir, "feedback.db")).feedback_of(completion_id)
    assert (feedback["rating"], feedback["corrected_text"], feedback["prompt"]) == (1, " a better ending", "Rate this")
