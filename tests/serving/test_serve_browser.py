"""The playground page in a real headless browser (Debian's chromium, driven by Selenium)."""

import os
import shutil

import pytest

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")

from test_serve import LiveServer, tiny_run

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from kerasllm.serving import ServedModel

    live = LiveServer(ServedModel.load(tiny_run(tmp_path_factory)), api_key="page-key", chunk_tokens=4)
    yield live
    live.stop()


def test_the_page_streams_a_completion(browser, server, tmp_path):
    import openai
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="page-key", max_retries=0)
    name = server.state.served.name
    expected = client.completions.create(model=name, prompt="the quick", max_tokens=24, temperature=0).choices[0].text

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda b: name in b.find_element(By.ID, "model").text)
    assert browser.find_element(By.ID, "key-box").is_displayed()  # the server wants a key
    for field, value in {"api_key": "page-key", "temperature": "0", "max_tokens": "24"}.items():
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("the quick")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda b: b.find_element(By.ID, "status").text.startswith(("done", "error")))
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("done"), status
    assert browser.find_element(By.ID, "completion").text == expected.strip() or \
        browser.execute_script("return document.getElementById('completion').textContent") == expected
    chunks = int(status.split()[1])
    assert chunks >= 3  # 24 tokens in chunks of 4 arrived as separate events
    shot = os.environ.get("KERASLLM_PLAYGROUND_SCREENSHOT") or str(tmp_path / "playground.png")
    assert browser.save_screenshot(shot)


def test_the_page_shows_a_wrong_key(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: server.state.served.name in b.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "api_key").send_keys("wrong")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("error"))
    assert "Incorrect API key" in browser.find_element(By.ID, "status").text
