"""Tests of scripts/gpu/kernels.py: one batch's GPU kernels from Nsight Compute's CSV."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu" / "kernels.py"
kernels = load_script("scripts/gpu/kernels.py")

HEADER = ",".join(
    f'"{c}"'
    for c in [
        "ID",
        "Process ID",
        "Process Name",
        "Host Name",
        "Kernel Name",
        "Context",
        "Stream",
        "Block Size",
        "Grid Size",
        "Device",
        "CC",
        "Section Name",
        "Metric Name",
        "Metric Unit",
        "Metric Value",
    ]
)


def row(i: int, name: str, ns: float, grid: str = "(8, 1, 1)") -> str:
    return (
        f'"{i}","1","radiogate-bench","127.0.0.1","{name}","1","7","(256, 1, 1)","{grid}","0","9.0",'
        f'"Command line profiler metrics","gpu__time_duration.sum","nsecond","{ns:,.0f}"'
    )


# One batch: a convolution twice at two grid sizes, an elementwise kernel and a resize.
BATCH = [
    ("void cudnn::conv<float, 3>(float const*, float*)", 4000, "(8, 1, 1)"),
    ("void onnxruntime::cuda::_BinaryElementWise<float>(int, float*)", 1000, "(8, 1, 1)"),
    ("void cudnn::conv<float, 3>(float const*, float*)", 2000, "(4, 1, 1)"),
    ("void onnxruntime::cuda::_ResizeNearestKernel<float>(long, float*)", 3000, "(8, 1, 1)"),
]
WARMUP = [("void cudnn::search<1>(int)", 50000, "(1, 1, 1)")] * 5


def csv_text(sequence) -> str:
    lines = ["==PROF== Connected to process 1", HEADER]
    lines += [row(i, name, ns, grid) for i, (name, ns, grid) in enumerate(sequence)]
    return "\n".join(lines) + "\n"


def test_the_last_whole_batch_is_summed_by_kernel_name():
    rows = kernels.kernels(csv_text(WARMUP + BATCH * 3).splitlines(keepends=True))
    result = kernels.summary(rows, batch=10, top=12, min_kernels=2)
    assert result["kernels_per_batch"] == 4
    assert result["whole_batches_at_end"] == 3
    assert result["gpu_us_per_batch"] == pytest.approx(10.0)
    assert result["gpu_us_per_image"] == pytest.approx(1.0)
    assert result["images_per_s_if_gpu_bound"] == 1_000_000
    top = result["top"][0]
    assert (top["kernel"], top["calls"], top["us_per_batch"], top["share"]) == ("cudnn::conv", 2, 6.0, 0.6)


def test_a_run_stopped_inside_a_batch_still_sums_one_whole_batch():
    # Any run of one period's kernels holds each of a batch's kernels once.
    rows = kernels.kernels(csv_text(BATCH * 3 + BATCH[:1]).splitlines(keepends=True))
    result = kernels.summary(rows, batch=10, top=12, min_kernels=2)
    assert result["kernels_per_batch"] == 4
    assert result["gpu_us_per_batch"] == pytest.approx(10.0)


def test_grid_sizes_tell_kernels_of_one_name_apart():
    # Names alone repeat with period 2 here (conv, elementwise); the grids make it 4.
    seq = [("a", 1.0, "(8, 1, 1)"), ("b", 1.0, "(8, 1, 1)"), ("a", 1.0, "(4, 1, 1)"), ("b", 1.0, "(4, 1, 1)")]
    rows = kernels.kernels(csv_text(seq * 2).splitlines(keepends=True))
    assert kernels.last_batch([r[:3] for r in rows], min_kernels=2) == (4, 2)


def test_no_repeating_batch_is_an_error(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text(csv_text(WARMUP[:1] + BATCH))
    run = subprocess.run([sys.executable, str(SCRIPT), str(path), "--batch", "4"], capture_output=True, text=True)
    assert run.returncode == 1
    assert "no batch" in run.stderr


def test_the_command_prints_one_line_with_its_variant(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text(csv_text(BATCH * 2))
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), "--batch", "10", "--variant", "tf32", "--min-kernels", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    line = json.loads(run.stdout)
    assert line["variant"] == "tf32"
    assert line["kernels_per_batch"] == 4


def test_short_names_drop_templates_and_parameters():
    assert kernels.short_name("void a::b<float, c<2>>(int, float*)") == "a::b"
