"""Server-rendered SVG line charts (no JavaScript): a metric over time."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 420, 170, 38, 12, 22, 26


def line_chart(
    title: str, points: Sequence[tuple[dt.datetime, float | None]], *, y_max: float | None = 1.0, percent: bool = False
) -> Markup:
    """``points`` (time, value; ``None`` is a gap) as an inline SVG with its title and axes."""
    known = [(t, v) for t, v in points if v is not None]
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{PAD_LEFT}" y="14" font-weight="600">{escape(title)}</text>',
    ]
    x0, x1, y0, y1 = PAD_LEFT, WIDTH - PAD_RIGHT, HEIGHT - PAD_BOTTOM, PAD_TOP
    parts.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/>')
    parts.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/>')
    if not known:
        parts.append(f'<text x="{x0 + 10}" y="{(y0 + y1) / 2}">no data yet</text></svg>')
        return Markup("".join(parts))
    top = max(y_max or 0.0, max(v for _, v in known)) or 1.0
    start, end = known[0][0], known[-1][0]
    span = (end - start).total_seconds() or 1.0

    def x(t: dt.datetime) -> float:
        return x0 + (x1 - x0) * ((t - start).total_seconds() / span if len(known) > 1 else 0.5)

    def y(v: float) -> float:
        return y0 - (y0 - y1) * (v / top)

    label = (lambda v: f"{v:.0%}") if percent else (lambda v: f"{v:.2f}")
    for fraction in (0.0, 0.5, 1.0):
        parts.append(f'<text x="2" y="{y(top * fraction) + 3:.1f}">{label(top * fraction)}</text>')
    parts.append(f'<text x="{x0}" y="{HEIGHT - 8}">{start:%Y-%m-%d %H:%M}</text>')
    if len(known) > 1:
        parts.append(f'<text x="{x1}" y="{HEIGHT - 8}" text-anchor="end">{end:%Y-%m-%d %H:%M}</text>')
    # Gaps split the line into segments.
    segment: list[str] = []
    for t, v in points:
        if v is None:
            if segment:
                parts.append(f'<polyline class="line" points="{" ".join(segment)}"/>')
            segment = []
            continue
        segment.append(f"{x(t):.1f},{y(v):.1f}")
    if segment:
        parts.append(f'<polyline class="line" points="{" ".join(segment)}"/>')
    for t, v in known:
        parts.append(
            f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="#2b5fd9"><title>{label(v)}</title></circle>'
        )
    parts.append(f'<text x="{x1}" y="14" text-anchor="end">last {label(known[-1][1])}</text></svg>')
    return Markup("".join(parts))
