"""`make bench-gpu` (benchmarks/gpu/run_all.py): one line and exit 0 without a GPU; on a tiny
size (CPU, fp32) every part lands in one JSON and one markdown table, each check passed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu" / "run_all.py"
PARTS = ["stage-1 step", "stage-2 step", "decoder per prompt", "segment everything", "ONNX decoder"]


def run_all(args: list[str], cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    res = run_all(["--out", str(tmp_path / "out")], tmp_path, CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines() == [
        "bench-gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
        "nothing measured. CPU figures: make bench"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_tiny_cpu_run_writes_every_part_to_one_json_and_one_table(tmp_path):
    out = tmp_path / "out"
    res = run_all(["--device", "cpu", "--preset", "tiny", "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["device"] == "cpu" and result["precision"] == "fp32"
    assert [p["name"] for p in result["parts"]] == PARTS
    for part in result["parts"]:
        assert part["error"] is None, part
        assert part["rows"] and part["data"], part["name"]
    stage1 = result["parts"][0]["data"]["tiny"]
    assert stage1["fp32_loss_abs_diff_vs_transformers"] < 1e-4
    assert set(stage1["images_per_s"]) == {"ours", "peer"}
    amg = result["parts"][3]["data"]["permissive"]
    assert amg["masks_ours"] == amg["masks_theirs"] > 0 and amg["worst_best_match_iou"] > 0.99

    lines = (out / "gpu_bench.md").read_text().splitlines()
    assert lines[0] == "# GPU benchmarks: cpu (fp32, preset tiny)"
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| part | figure | ours | peer | ratio | check |"
    rows = table[2:]
    assert len(rows) == sum(len(p["rows"]) for p in result["parts"])
    assert all(line.count("|") == 7 for line in table)  # six cells, no stray pipes
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [
        row["part"] for p in result["parts"] for row in p["rows"]
    ]
    checks = [r.rsplit(" | ", 1)[1] for r in rows]
    assert not any("FAILED" in c for c in checks)
    assert sum("ok" in c for c in checks) == 6  # stage 1, stage 2, decoder, 2 x amg, onnx
