"""Loss curves as small standalone SVG files: ``<stem>.loss.svg`` in the outbox, ``stylebox
plot MANIFEST`` for older results, and the live curve of the status page.

Drawn here from a job's history (one ``{"step": n, metric: value, ...}`` entry a step) so
that no plotting library is needed and the file opens in any browser, offline. The y axis
is logarithmic: style and content losses differ by orders of magnitude and fall by several.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path

from stylebox.errors import BadInput
from stylebox.images import atomic_write_bytes

#: The metrics drawn, in order, with their label and colour. ``loss`` is the total a plugin
#: minimises; a history without it has no loss curve.
SERIES: tuple[tuple[str, str, str], ...] = (
    ("loss", "total", "#1f6feb"),
    ("content", "content", "#2da44e"),
    ("style", "style", "#d1242f"),
    ("tv", "TV", "#9a6700"),
    ("photo", "photorealism", "#8250df"),  # the photo preset's matting-Laplacian term
)


def has_loss(history: Iterable[Mapping[str, float]]) -> bool:
    """Whether ``history`` records a loss to draw."""
    return any(_positive(entry.get("loss")) for entry in history)


def series(history: Sequence[Mapping[str, float]]) -> dict[str, list[tuple[float, float]]]:
    """``(step, value)`` points per drawn metric; values a log scale cannot show (zero,
    negative, not finite) are left out."""
    points: dict[str, list[tuple[float, float]]] = {}
    for key, _, _ in SERIES:
        line = [
            (float(entry["step"]), float(entry[key]))
            for entry in history
            if "step" in entry and _positive(entry.get(key))
        ]
        if line:
            points[key] = line
    return points


def _middle_cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: its start and end with "…" between."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def render_svg(
    history: Sequence[Mapping[str, float]],
    title: str = "",
    width: int = 640,
    height: int = 320,
) -> str | None:
    """The loss curves of ``history`` as an SVG document; ``None`` if it has no loss."""
    if not has_loss(history):
        return None
    lines = series(history)
    steps = [step for line in lines.values() for step, _ in line]
    values = [value for line in lines.values() for value in _in_range(line)]
    left, right, top, bottom = 64, 96, 28 if title else 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    first, last = min(steps), max(steps)
    span = (last - first) or 1.0
    low = math.floor(math.log10(min(values)))
    high = math.ceil(math.log10(max(values)))
    if high == low:
        high += 1

    def x(step: float) -> float:
        return left + (step - first) / span * plot_w

    def y(value: float) -> float:  # a start far below its curve sits on the lower edge
        return top + (high - max(math.log10(value), low)) / (high - low) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="loss-plot" viewBox="0 0 {width} '
        f'{height}" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
    ]
    if title:
        full_title = title
        # About 7 px a character at 13 px: a long name loses its middle, not the plot's edge.
        title = _middle_cut(title, max(8, (width - left - 8) // 7))
        parts.append(f'<text x="{left}" y="18" font-size="13">{escape(title)}</text>')
        parts.insert(1, f"<title>{escape(full_title)}</title>")  # a browser tab's name
    # A decade a grid line; at most about eight labels, whatever the range.
    every = max(1, math.ceil((high - low) / 8))
    for power in range(low, high + 1, every):
        level = y(10.0**power)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{level:.1f}" y2="{level:.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{level + 4:.1f}" text-anchor="end">1e{power}</text>'
        )
    for step in sorted({first, last}):
        parts.append(
            f'<text x="{x(step):.1f}" y="{height - 14}" text-anchor="middle">{step:g}</text>'
        )
    # Where a coarse-to-fine run moves to a larger size its losses jump (more pixels, a
    # fresh optimiser): a dashed line says so, or the jump looked like a run going wrong.
    for step, size in scale_changes(history):
        at = x(step)
        parts.append(
            f'<line data-scale="{size:g}" x1="{at:.1f}" x2="{at:.1f}" y1="{top}" '
            f'y2="{top + plot_h}" stroke="#888" stroke-dasharray="4 3"/>'
            f'<text x="{at + 3:.1f}" y="{top + 11}" fill="#666">{size:g} px</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" text-anchor="middle">step</text>'
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#888"/>'
    )
    row = 0
    for key, label, colour in SERIES:
        line = lines.get(key)
        if not line:
            continue
        if len(line) == 1:  # one step: a dot, so that the curve is still seen
            step, value = line[0]
            parts.append(
                f'<circle data-series="{key}" cx="{x(step):.1f}" cy="{y(value):.1f}" r="2.5" '
                f'fill="{colour}"/>'
            )
        else:
            coords = " ".join(f"{x(step):.1f},{y(value):.1f}" for step, value in line)
            parts.append(
                f'<polyline data-series="{key}" fill="none" stroke="{colour}" '
                f'stroke-width="1.5" points="{coords}"/>'
            )
        legend_y = top + 12 + row * 16
        parts.append(
            f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 26}" y1="{legend_y - 4}" '
            f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{left + plot_w + 30}" y="{legend_y}">{label}</text>'
        )
        row += 1
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def scale_changes(history: Sequence[Mapping[str, float]]) -> list[tuple[float, float]]:
    """``(step, size)`` where the ``size`` metric (the longest side a coarse-to-fine run
    works at) changes from the step before; none for a history without one."""
    changes: list[tuple[float, float]] = []
    before: float | None = None
    for entry in history:
        size = entry.get("size")
        if "step" not in entry or not _positive(size):
            continue
        if before is not None and size != before:
            changes.append((float(entry["step"]), float(size)))
        before = size
    return changes


def _in_range(line: list[tuple[float, float]]) -> list[float]:
    """The values of ``line`` the axis spans: all but a first few that lie a thousand times
    below the median of the rest. A gatys run starts at the photo, so its content loss
    starts at 0 (left out) and then a few units, decades below the rest of its curve:
    spanned, they squeezed every curve into the top of the plot. A curve's fall is never
    left out: only a start below what follows, and never its last point."""
    values = [value for _, value in line]
    start = 0
    while start < len(values) - 1 and values[start] < statistics.median(values[start + 1 :]) / 1000:
        start += 1
    return values[start:]


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def plot_manifest(manifest: Path, out: Path | None = None) -> Path:
    """Draw the loss curves a result's manifest records (``stylebox plot``), by default to
    ``<stem>.loss.svg`` beside it; the manifest itself is left as it is. Raises
    :class:`BadInput` for a file that is no manifest or records no loss."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read {manifest}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BadInput(f"{manifest} is not JSON: {exc}") from None
    history = data.get("history") if isinstance(data, dict) else None
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise BadInput(f"{manifest} is not a stylebox manifest: it has no history list")
    stem = manifest.name.removesuffix(".json")
    svg = render_svg(history, title=stem)
    if svg is None:
        raise BadInput(f"{manifest} records no loss to plot (its plugin reports none)")
    target = out or manifest.with_name(f"{stem}.loss.svg")
    atomic_write_bytes(target, svg.encode(), sync_folder=False)
    return target
