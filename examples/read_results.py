"""Read radiogate results in Python: decode each `radiogate.v1.Classification`'s attention
summary into a numpy array and draw it over the image the model saw (PNG).

From a file written by `radiogate classify --format protobuf --out FILE`:

    python examples/read_results.py examples/data/first-sample.pb --png-dir out/overlays

From the results topic of a running worker (needs `pip install confluent-kafka`):

    python examples/read_results.py --kafka 127.0.0.1:9092 --topic radiogate.results \
        --group my-reader --max 20 --png-dir out/overlays

The attention summary (proto/radiogate/v1/radiogate.proto, src/summary.rs): `map_zstd` is
a zstd-compressed `grid` x `grid` array of bytes, row-major, row 0 the lowest pixel y as in
FITS; byte v means v * `scale` of the attention in that cell, and the cells sum to about 1
over the 150x150 model input (the central 150x150 of the cutout window). Per-gate maps, when
the worker is configured to send them, are encoded the same way at the gate's resolution.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import radiogate_pb2 as pb
import zstandard
from google.protobuf import proto
from matplotlib.figure import Figure

MODEL_SIZE = 150
# FIRST pixels, arcsec (other surveys: read CDELT from the FITS header).
FIRST_PIXEL_ARCSEC = 1.8


class DecodeError(ValueError):
    """A stored map that is not what its summary says it is."""


def read_file(path: Path) -> Iterator[pb.Classification]:
    """The length-delimited `Classification`s of a `--format protobuf` results file."""
    with path.open("rb") as f:
        while (message := proto.parse_length_prefixed(pb.Classification, f)) is not None:
            yield message


def read_kafka(brokers: str, topic: str, group: str, max_messages: int, idle_s: float) -> Iterator[pb.Classification]:
    """`Classification`s from a results topic (one message each), from the group's committed
    offsets or the earliest; stops after `max_messages` or `idle_s` seconds without one."""
    try:
        from confluent_kafka import Consumer
    except ImportError as e:
        raise SystemExit("reading from Kafka needs confluent-kafka: pip install confluent-kafka") from e
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        for _ in range(max_messages):
            msg = consumer.poll(idle_s)
            if msg is None:
                return
            if msg.error():
                raise SystemExit(f"kafka: {msg.error()}")
            yield pb.Classification.FromString(msg.value())
    finally:
        consumer.close()


def _decode(map_zstd: bytes, width: int, height: int, scale: float) -> np.ndarray:
    cells = width * height
    try:
        # The bound keeps a corrupt or hostile map from allocating more than it should.
        raw = zstandard.ZstdDecompressor().decompress(map_zstd, max_output_size=cells)
    except zstandard.ZstdError as e:
        raise DecodeError(f"map is not valid zstd: {e}") from e
    if len(raw) != cells:
        raise DecodeError(f"map has {len(raw)} cells, expected {cells}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width).astype(np.float32) * np.float32(scale)


def attention_grid(summary: pb.AttentionSummary) -> np.ndarray:
    """The combined attention map [grid, grid] (row 0 = lowest y), each cell its share."""
    return _decode(summary.map_zstd, summary.grid, summary.grid, summary.scale)


def gate_maps(summary: pb.AttentionSummary) -> dict[int, np.ndarray]:
    """Each gate's map at its own resolution, when the worker sent them (else empty)."""
    return {g.gate: _decode(g.map_zstd, g.width, g.height, g.scale) for g in summary.gates}


def model_input_image(c: pb.Classification, root: Path) -> np.ndarray | None:
    """The 150x150 pixels the model saw (before clipping and scaling), from the FITS file
    the result names, or None when that file is not readable here (inline cutouts, another
    machine's paths)."""
    from astropy.io import fits

    path = Path(c.cutout.file)
    path = path if path.is_absolute() else root / path
    if c.cutout.file in ("", "inline") or not path.is_file():
        return None
    data = np.asarray(fits.getdata(path), dtype=np.float64)
    data = data.reshape(data.shape[-2:]) if data.ndim > 2 else data  # drop degenerate axes
    w, h = c.cutout.width, c.cutout.height
    window = np.full((h, w), np.nan)
    y0, x0 = c.cutout.y0, c.cutout.x0
    ys, xs = slice(max(y0, 0), min(y0 + h, data.shape[0])), slice(max(x0, 0), min(x0 + w, data.shape[1]))
    window[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = data[ys, xs]
    r0, c0 = h // 2 - MODEL_SIZE // 2, w // 2 - MODEL_SIZE // 2
    return window[r0 : r0 + MODEL_SIZE, c0 : c0 + MODEL_SIZE]


def draw_overlay(c: pb.Classification, png: Path, root: Path = Path()) -> bool:
    """Draws the combined attention over the model input (asinh stretch, emission above the
    clipping threshold outlined, peaks marked) into `png`. Returns whether the image could be
    read; without it only the attention map is drawn."""
    grid = attention_grid(c.attention)
    image = model_input_image(c, root)
    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.add_subplot()
    extent = (-0.5, MODEL_SIZE - 0.5, -0.5, MODEL_SIZE - 0.5)
    if image is not None:
        finite = np.nan_to_num(image, nan=0.0)
        ax.imshow(np.arcsinh(finite / max(c.cutout.rms, 1e-30)), origin="lower", cmap="gray", extent=extent)
        ax.contour(finite > c.cutout.clip_threshold, levels=[0.5], colors="cyan", linewidths=0.7, extent=extent)
    shown = ax.imshow(grid, origin="lower", cmap="inferno", alpha=0.55 if image is not None else 1.0, extent=extent)
    fig.colorbar(shown, ax=ax, label="attention per cell")
    for rank, peak in enumerate(c.attention.peaks, start=1):
        ax.plot(peak.x, peak.y, "+", color="lime", markersize=12, markeredgewidth=1.5)
        ax.annotate(str(rank), (peak.x, peak.y), xytext=(4, 4), textcoords="offset points", color="lime")
    label = pb.Label.Name(c.label).removeprefix("LABEL_")
    ax.set_title(
        f"{c.source_id}\n{label} ({c.confidence:.2f}), {c.attention.on_emission_fraction:.1%} of attention on emission",
        fontsize=9,
    )
    ax.set_xlabel(f"x (pixels, {FIRST_PIXEL_ARCSEC} arcsec for FIRST)")
    ax.set_ylabel("y (pixels)")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    return image is not None


def _safe_name(source_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "+-._" else "_" for ch in source_id) or "unnamed"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", type=Path, help="file of length-delimited Classifications")
    p.add_argument("--kafka", metavar="BROKERS", help="read the results topic on these brokers instead")
    p.add_argument("--topic", help="results topic (with --kafka)")
    p.add_argument("--group", default="radiogate-example-reader", help="consumer group (with --kafka)")
    p.add_argument("--max", type=int, default=100, help="messages to read from Kafka at most")
    p.add_argument("--idle", type=float, default=10.0, help="stop after this many seconds without a message")
    p.add_argument("--png-dir", type=Path, help="write one overlay PNG per result here")
    p.add_argument("--root", type=Path, default=Path(), help="folder that relative FITS paths are under")
    a = p.parse_args(argv)
    if (a.results is None) == (a.kafka is None):
        p.error("give a results file or --kafka (not both)")
    if a.kafka and not a.topic:
        p.error("--kafka needs --topic")
    messages = read_file(a.results) if a.results else read_kafka(a.kafka, a.topic, a.group, a.max, a.idle)
    for c in messages:
        grid = attention_grid(c.attention)
        top = c.attention.peaks[0] if c.attention.peaks else None
        print(
            f"{c.source_id}: {pb.Label.Name(c.label)} p(FRII)={c.prob_frii:.3f}, attention {grid.shape[0]}x"
            f"{grid.shape[1]} summing to {grid.sum():.3f}, {c.attention.on_emission_fraction:.1%} on emission"
            + (f", strongest peak at ({top.x:.0f}, {top.y:.0f}) px" if top else "")
        )
        if a.png_dir:
            draw_overlay(c, a.png_dir / f"{_safe_name(c.source_id)}.png", a.root)


if __name__ == "__main__":
    sys.exit(main())
