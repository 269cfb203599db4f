"""The `sam-app` server without a browser: one embedding per image, masks as COCO RLE and paint
runs that decode to the same pixels, and one-line errors for what the page can get wrong."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randomise, tiny_sam

from sam_train.weights.safetensors_io import save_weights

pytest.importorskip("fastapi")
mask_utils = pytest.importorskip("pycocotools.mask")
from fastapi.testclient import TestClient  # noqa: E402

from sam_train.app.server import ImageStore, Prompt, SegmentService, mask_runs  # noqa: E402
from sam_train.app.web import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_server")
    sam = randomise(tiny_sam().eval())
    save_weights(tmp / "sam.safetensors", sam.state_dict(), {"architecture": sam.architecture})
    service = SegmentService(tmp / "sam.safetensors", ImageStore(None))
    client = TestClient(create_app(service))
    client.app_service = service
    return client


def runs_to_mask(runs: list[int], h: int, w: int) -> np.ndarray:
    flat = np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(runs)])
    return flat.reshape(w, h).T


@pytest.mark.parametrize("first", [0, 1])
def test_paint_runs_decode_to_the_mask(first):
    mask = np.random.default_rng(first).random((7, 5)) > 0.5
    mask[0, 0] = bool(first)
    assert np.array_equal(runs_to_mask(mask_runs(mask), 7, 5), mask)


def test_each_click_runs_only_the_decoder_and_masks_agree(client):
    assert "arc2017.jpg" in client.get("/api/info").json()["images"]
    first = client.post("/api/embed/arc2017.jpg").json()
    assert first["embed_ms"] > 0
    out = client.post(
        "/api/segment", json={"image": "arc2017.jpg", "points": [[100, 120]], "labels": [1]}
    ).json()
    assert out["embed_ms"] == 0.0  # embedded once, on pick
    assert (out["width"], out["height"]) == (640, 480) and len(out["masks"]) == 3
    for m in out["masks"]:
        rle = mask_utils.decode(m["rle"]).astype(bool)
        assert np.array_equal(rle, runs_to_mask(m["runs"], 480, 640)) and rle.sum() == m["area"]
    box = client.post("/api/segment", json={"image": "arc2017.jpg", "box": [50, 60, 300, 200]})
    assert box.status_code == 200


@pytest.mark.parametrize(
    "request_body, text",
    [
        ({"points": [[10, 10]], "labels": [1]}, "pick or upload an image first"),
        ({"image": "arc2017.jpg", "points": [[700, 10]], "labels": [1]}, "outside the 640x480"),
        ({"image": "arc2017.jpg"}, "click a point or drag a box"),
        ({"image": "nope.png", "points": [[1, 1]], "labels": [1]}, "no image 'nope.png'"),
    ],
)
def test_bad_requests_answer_one_line(client, request_body, text):
    out = client.post("/api/segment", json=request_body)
    assert out.status_code == 400 and text in out.json()["error"]


def test_an_upload_that_is_not_an_image_is_refused(client):
    out = client.post("/api/upload", files={"file": ("notes.txt", b"hello")})
    assert out.status_code == 400 and "not an image" in out.json()["error"]


@pytest.mark.parametrize("decoder, agreement", [("onnx", 0.999), ("onnx-int8", 0.9)])
def test_the_onnx_decoder_gives_the_predictors_masks(client, decoder, agreement):
    pytest.importorskip("onnxruntime")
    torch_service = client.app_service
    service = SegmentService(torch_service.checkpoint, torch_service.images, decoder=decoder)
    for prompt in (
        Prompt([[100.0, 120.0]], [1]),
        Prompt([[100.0, 120.0], [300.0, 200.0]], [1, 0]),
        Prompt([], [], [50.0, 60.0, 300.0, 200.0]),
        Prompt([[120.0, 100.0]], [1], [50.0, 60.0, 300.0, 200.0]),
    ):
        ref = torch_service.segment("arc2017.jpg", prompt)
        got = service.segment("arc2017.jpg", prompt)
        for a, b in zip(ref["masks"], got["masks"]):
            same = mask_utils.decode(a["rle"]) == mask_utils.decode(b["rle"])
            assert same.mean() > agreement
            if decoder == "onnx":
                assert abs(a["score"] - b["score"]) < 1e-4


def test_sam_app_with_a_missing_checkpoint_exits_2_in_one_line(tmp_path, capsys) -> None:
    from sam_train.cli.app import main as app_main

    with pytest.raises(SystemExit) as exit_:
        app_main([str(tmp_path / "missing.pth")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sam-app: error: checkpoint {tmp_path / 'missing.pth'} does not exist"


def test_sam_app_on_a_busy_port_exits_2_in_one_line_before_any_url(tmp_path, capsys) -> None:
    import socket

    from sam_train.cli.app import main as app_main

    (tmp_path / "sam.pth").write_bytes(b"not loaded: the port is checked first")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            app_main([str(tmp_path / "sam.pth"), "--port", str(port)])
        assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert "http://" not in out
    (line,) = err.strip().splitlines()
    assert (
        line.startswith(f"sam-app: error: cannot listen on 127.0.0.1:{port}") and "--port" in line
    )


def test_sam_app_serves_the_page_on_the_port_it_prints(tmp_path) -> None:
    import os
    import re
    import signal
    import subprocess
    import time
    import urllib.request

    from conftest import console_script

    sam = randomise(tiny_sam().eval())
    ckpt = tmp_path / "sam.safetensors"
    save_weights(ckpt, sam.state_dict(), {"architecture": sam.architecture})
    proc = subprocess.Popen(
        [console_script("sam-app"), str(ckpt), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(found.group(0), timeout=5) as page:
                    assert page.status == 200
                    break
            except OSError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
