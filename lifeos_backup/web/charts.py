"""Line charts as SVG, drawn on the server: readable with JavaScript off, nothing to build.

One chart is a few series of (time, value) points over a fixed time range; every point carries a
<title>, so hovering shows its value in any browser. Text is escaped (markupsafe); numbers are
formatted by the caller's `fmt` (bytes, durations).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 14, 40
COLOURS = ("#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626")
Point = tuple[datetime, float]


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_seconds(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    if value < 2 * 3600:
        return f"{value / 60:.1f} min"
    if value < 2 * 86400:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def _nice_top(value: float) -> float:
    """A round number at or above `value` for the y axis."""
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        if step * factor >= value:
            return step * factor
    return value


def line_chart(
    title: str,
    series: dict[str, list[Point]],
    start: datetime,
    end: datetime,
    fmt: Callable[[float], str],
) -> Markup:
    """An <svg> of `series` between `start` and `end`; a chart without points says so."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max((end - start).total_seconds(), 1.0)
    values = [v for points in series.values() for _t, v in points]
    top = _nice_top(max(values, default=0.0))

    def x(moment: datetime) -> float:
        return LEFT + plot_w * min(max((moment - start).total_seconds() / span, 0.0), 1.0)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for step in range(5):  # y grid and labels
        value = top * step / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'class="grid"/><text x="{LEFT - 6}" y="{y(value) + 4:.1f}" class="ylabel">'
            f"{escape(fmt(value))}</text>"
        )
    tick = start
    while tick <= end:  # x labels every 15 days
        parts.append(
            f'<text x="{x(tick):.1f}" y="{HEIGHT - BOTTOM + 16}" class="xlabel">{tick:%m-%d}</text>'
        )
        tick += timedelta(days=15)
    if not values:
        parts.append(
            f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" class="empty">no data yet</text>'
        )
    for number, (name, points) in enumerate(sorted(series.items())):
        colour = COLOURS[number % len(COLOURS)]
        if points:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
            parts.append(f'<polyline points="{path}" stroke="{colour}" class="line"/>')
            for moment, value in points[-200:] if len(points) > 200 else points:
                parts.append(
                    f'<circle cx="{x(moment):.1f}" cy="{y(value):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{escape(name)} {moment:%Y-%m-%d %H:%M}: {escape(fmt(value))}</title>"
                    "</circle>"
                )
        legend_x = LEFT + number * 130
        parts.append(
            f'<rect x="{legend_x}" y="{HEIGHT - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{HEIGHT - 5}" class="legend">{escape(name)} '
            f"({len(points)})</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece of text above is escaped
