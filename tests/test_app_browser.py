"""`sam-app` in a real headless browser (Debian's chromium + chromedriver via selenium): load the
page, click on a test image, read back the mask the page received and compare it with
`SamPredictor.predict` for the same point; the page's error messages; its downloads."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import console_script, randomise, tiny_sam
from PIL import Image

from sam_train.predictor import SamPredictor
from sam_train.weights.safetensors_io import save_weights

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium + chromium-driver (`make system-deps` installs them)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver")
mask_utils = pytest.importorskip("pycocotools.mask")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sam-app` started as a user starts it, on a free local port."""

    def __init__(self, checkpoint: Path, images: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [
                console_script("sam-app"),
                str(checkpoint),
                "--images",
                str(images),
                "--port",
                str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "api/info", timeout=2).read()
                return
            except OSError:
                assert self.proc.poll() is None, log.read_text()
                time.sleep(0.3)
        raise TimeoutError(f"sam-app did not answer: {log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    sam = randomise(tiny_sam().eval())
    save_weights(tmp / "sam.safetensors", sam.state_dict(), {"architecture": sam.architecture})
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    picture = np.zeros((90, 120, 3), np.uint8)  # a bright square on a noisy ground
    picture[...] = rng.integers(0, 60, picture.shape)
    picture[20:60, 30:80] = [220, 180, 40]
    Image.fromarray(picture).save(images / "square.png")
    Image.fromarray(picture[:, :90]).save(tmp / "upload.png")  # square: letterboxed on the page
    return tmp


@pytest.fixture(scope="module")
def server(workdir):
    srv = Server(workdir / "sam.safetensors", workdir / "images", workdir / "server.log")
    yield srv
    srv.stop()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,900",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(tmp_path), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def state(driver, expr: str):
    return driver.execute_script(f"return window.samState.{expr};")


def wait_for(driver, expr: str, timeout: float = 60):
    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return {expr};"))


def click_image_pixel(driver, x: float, y: float) -> None:
    """Click where image pixel (x, y) is drawn (the page letterboxes and scales the image)."""
    canvas = driver.find_element(By.ID, "stage")
    view = state(driver, "view")
    dx = view["ox"] + x * view["scale"] - canvas.size["width"] / 2
    dy = view["oy"] + y * view["scale"] - canvas.size["height"] / 2
    ActionChains(driver).move_to_element_with_offset(canvas, round(dx), round(dy)).click().perform()


def wait_until_file(path: Path, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"no download {path.name}: {sorted(path.parent.iterdir())}"
        time.sleep(0.1)


def message(driver) -> str:
    return driver.find_element(By.ID, "message").text


def test_a_click_on_the_page_gives_the_predictors_mask(server, browser, workdir, tmp_path):
    browser.get(server.url)
    wait_for(browser, "document.querySelectorAll('#image-select option').length > 1")
    Select(browser.find_element(By.ID, "image-select")).select_by_value("square.png")
    wait_for(browser, "window.samState.ready")
    click_image_pixel(browser, 50, 40)
    wait_for(browser, "window.samState.result !== null && !window.samState.busy")

    result, points, labels = (
        state(browser, "result"),
        state(browser, "points"),
        state(browser, "labels"),
    )
    assert labels == [1] and abs(points[0][0] - 50) <= 1 and abs(points[0][1] - 40) <= 1
    predictor = SamPredictor.from_checkpoint(workdir / "sam.safetensors")
    predictor.set_image(np.asarray(Image.open(workdir / "images" / "square.png").convert("RGB")))
    masks, scores, _ = predictor.predict(point_coords=points, point_labels=labels)
    assert len(result["masks"]) == 3
    for got, mask, score in zip(result["masks"], masks, scores):
        assert np.array_equal(mask_utils.decode(got["rle"]).astype(bool), mask)
        assert abs(got["score"] - score) < 1e-5
    assert (
        state(browser, "lastClickMs") > 0
        and "click to mask" in browser.find_element(By.ID, "timing").text
    )

    # switch to the second ambiguity output, download it both ways
    browser.find_element(By.CSS_SELECTOR, "button.choice[data-index='1']").click()
    assert state(browser, "selected") == 1
    png = tmp_path / "square_mask2.png"  # the browser downloads into the test's tmp_path
    browser.find_element(By.ID, "download-png").click()
    wait_until_file(png)
    browser.find_element(By.ID, "download-rle").click()
    wait_until_file(png.with_suffix(".json"))
    assert np.array_equal(np.asarray(Image.open(png).convert("L")) > 127, masks[1])
    rle = json.loads(png.with_suffix(".json").read_text())
    assert np.array_equal(mask_utils.decode(rle["segmentation"]).astype(bool), masks[1])


def test_page_errors_are_messages_not_stack_traces(server, browser, workdir):
    browser.get(server.url)
    wait_for(browser, "document.querySelectorAll('#image-select option').length > 1")
    browser.find_element(By.ID, "stage").click()
    assert message(browser) == "pick or upload an image first"

    browser.find_element(By.ID, "upload").send_keys(str(workdir / "upload.png"))
    wait_for(browser, "window.samState.ready")
    assert state(browser, "image").startswith("upload-")
    click_image_pixel(browser, -10, 45)  # in the letterbox margin left of the image
    assert message(browser).startswith("click inside the image")
    assert state(browser, "result") is None

    click_image_pixel(browser, 45, 45)  # the uploaded image segments too
    wait_for(browser, "window.samState.result !== null && !window.samState.busy")
    assert message(browser) == ""


def test_a_checkpoint_that_is_not_a_sam_is_shown_on_the_page(browser, workdir, tmp_path):
    from conftest import tiny_mae

    mae = tmp_path / "mae.safetensors"
    save_weights(mae, {f"encoder.{k}": v for k, v in tiny_mae().encoder.state_dict().items()}, {})
    srv = Server(mae, workdir / "images", tmp_path / "server.log")
    try:
        browser.get(srv.url)
        wait_for(browser, "document.getElementById('message').textContent.length > 0")
        text = message(browser)
        assert "could not be loaded as a SAM" in text and "not a SAM" in text
        assert "Traceback" not in browser.page_source
    finally:
        srv.stop()
