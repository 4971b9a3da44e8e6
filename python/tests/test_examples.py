"""examples/read_results.py on a real results file (examples/data/first-sample.pb, written by
`radiogate classify --format protobuf`; scripts/regen-examples.sh regenerates it)."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from radiogate_model import agreement as ag

from .conftest import REPO

sys.path.insert(0, str(REPO / "examples"))
import radiogate_pb2 as pb
import read_results as rr

FIXTURE = REPO / "examples" / "data" / "first-sample.pb"


@pytest.fixture(scope="module")
def results():
    return list(rr.read_file(FIXTURE))


def test_generated_classes_are_current(tmp_path):
    if shutil.which("protoc") is None:
        pytest.skip("protoc not installed (scripts/setup.sh installs it)")
    subprocess.run(
        ["protoc", "-Iproto/radiogate/v1", f"--python_out={tmp_path}", "proto/radiogate/v1/radiogate.proto"],
        cwd=REPO,
        check=True,
    )
    fresh = (tmp_path / "radiogate_pb2.py").read_text()
    assert fresh == (REPO / "examples" / "radiogate_pb2.py").read_text(), "run scripts/regen-examples.sh proto"


def test_reads_every_result(results):
    assert [c.label for c in results].count(pb.LABEL_FRI) + [c.label for c in results].count(pb.LABEL_FRII) == 4
    assert {c.source_id[:3] for c in results} == {"100", "104", "200", "201"}
    assert all(c.model.sha256 and c.HasField("attention") for c in results)


def test_combined_map_decodes_with_its_peak(results):
    for c in results:
        s = c.attention
        grid = rr.attention_grid(s)
        assert grid.shape == (s.grid, s.grid) == (30, 30)
        # The cells sum to 1 within half a quantisation step each.
        assert abs(grid.sum() - 1.0) <= grid.size * s.scale / 2
        # The largest cell is the strongest peak, whose weight the summary states.
        assert grid.max() == pytest.approx(s.peaks[0].weight, rel=1e-6)
        cell = 150 / s.grid
        row, col = round((s.peaks[0].y + 0.5) / cell - 0.5), round((s.peaks[0].x + 0.5) / cell - 0.5)
        assert grid[row, col] == grid.max()


def test_gate_maps_reproduce_the_workers_summary(results):
    """The per-gate maps, combined as radiogate_model.agreement does it, give the worker's
    combined map and its attention-on-emission fraction (from the FITS file's pixels)."""
    for c in results:
        gates = rr.gate_maps(c.attention)
        assert {g: m.shape for g, m in gates.items()} == {1: (37, 37), 2: (75, 75), 3: (150, 150)}
        combined = ag.combine([gates[g][None] for g in sorted(gates)])[0]
        a = ag.area_matrix(150, c.attention.grid)
        np.testing.assert_allclose(a @ combined @ a.T, rr.attention_grid(c.attention), atol=c.attention.scale)
        image = rr.model_input_image(c, REPO)
        assert image is not None and image.shape == (150, 150)
        on_emission = combined[image > c.cutout.clip_threshold].sum()
        assert on_emission == pytest.approx(c.attention.on_emission_fraction, abs=3e-4)


def test_overlay_png_is_written(results, tmp_path):
    png = tmp_path / "overlay.png"
    assert rr.draw_overlay(results[0], png, REPO)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Without the FITS file, the map alone.
    assert not rr.draw_overlay(results[0], tmp_path / "map-only.png", tmp_path)
    assert (tmp_path / "map-only.png").exists()


def test_command_line_prints_and_draws(tmp_path, capsys):
    rr.main([str(FIXTURE), "--png-dir", str(tmp_path), "--root", str(REPO)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("attention 30x30" in line for line in lines)
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_corrupt_maps_are_errors(results):
    s = pb.AttentionSummary()
    s.CopyFrom(results[0].attention)
    s.map_zstd = s.map_zstd[: len(s.map_zstd) // 2]
    with pytest.raises(rr.DecodeError):
        rr.attention_grid(s)
    s.CopyFrom(results[0].attention)
    s.grid = 29
    with pytest.raises(rr.DecodeError):
        rr.attention_grid(s)
