"""Small inline-SVG charts for the HTML report.

Written here rather than with matplotlib or a JavaScript plotting library because the report
must be one self-contained file that opens without network access, and these three chart
shapes (grouped bars, horizontal bars, lines) are all it draws: a plotting library would be a
heavy runtime dependency for ~150 lines of SVG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5")
_FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def _fmt(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return str(value if math.isfinite(value) else "n/a")
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-2:
        return f"{value:.2e}"
    return f"{value:.3g}"


def _nice(lo: float, hi: float, count: int = 5) -> tuple[float, float, list[float]]:
    """Round (lo, hi) out to a tick step of 1, 2 or 5 × 10^k; the ticks; their labels' digits."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first, last = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks = [first + i * step for i in range(round((last - first) / step) + 1)]
    return first, last, ticks


def _tick_label(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(value) or 1.0
    if max(abs(ticks[0]), abs(ticks[-1])) >= 1e5:
        return f"{value:.2e}"
    digits = max(0, -math.floor(math.log10(step)))
    return f"{value:.{digits}f}"


def _y_grid(ticks: list[float], y, left: float, right: float) -> list[str]:
    """Horizontal grid lines at the y ticks, labelled on the left (both chart kinds)."""
    parts = []
    for t in ticks:
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end" {_FONT}>{_tick_label(t, ticks)}</text>')
    return parts


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    parts, offset = [], 0.0
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{x + offset:.1f}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + offset + 14:.1f}" y="{y}" {_FONT}>{escape(name)}</text>')
        offset += 24 + 6.5 * len(name)
    return parts


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg class="chart" role="img" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><title>{escape(title)}</title>'
        + "".join(body) + "</svg>"
    )


def bar_chart(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]],
              y_label: str = "", width: int = 760, height: int = 300) -> str:
    """Grouped vertical bars: one group per label, one bar per series."""
    left, right, top, bottom = 64, 48, 28, 96
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if math.isfinite(v)]
    lo, hi, ticks = _nice(min([0.0, *values]), max([0.0, *values]) or 1.0)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    body = [f'<text x="{left}" y="16" {_FONT} font-weight="600">{escape(title)}</text>',
            *_y_grid(ticks, y, left, width - right)]
    if y_label:
        body.append(f'<text transform="translate(12,{top + plot_h / 2}) rotate(-90)" text-anchor="middle" {_FONT}>{escape(y_label)}</text>')
    slot = plot_w / max(len(labels), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for gi, label in enumerate(labels):
        x0 = left + gi * slot + slot * 0.1
        for si, (name, vs) in enumerate(series.items()):
            v = vs[gi]
            if not math.isfinite(v):
                continue
            top_y, base = sorted((y(v), y(0.0)))
            body.append(
                f'<rect class="mark" x="{x0 + si * bar:.1f}" y="{top_y:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{max(base - top_y, 0.5):.1f}" fill="{PALETTE[si % len(PALETTE)]}">'
                f"<title>{escape(label)} · {escape(name)}: {_fmt(v)}</title></rect>"
            )
        short = label if len(label) <= 22 else "…" + label[-21:]
        cx = x0 + slot * 0.4
        body.append(f'<text transform="translate({cx:.1f},{top + plot_h + 10}) rotate(35)" {_FONT}>{escape(short)}</text>')
    body += _legend(list(series), left, height - 6)
    return _frame(width, height, title, body)


def line_chart(title: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
               x_label: str = "", y_label: str = "", width: int = 760, height: int = 300,
               x_names: Sequence[str] | None = None) -> str:
    """Lines with markers: ``series`` maps a name to (xs, ys). ``x_names`` labels integer xs."""
    left, right, top, bottom = 64, 48, 28, 96 if x_names else 52
    plot_w, plot_h = width - left - right, height - top - bottom
    xs_all = [x for xs, _ in series.values() for x in xs]
    ys_all = [v for _, ys in series.values() for v in ys if math.isfinite(v)]
    x_lo, x_hi = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    y_lo, y_hi, y_ticks = _nice(*((min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def px(v: float) -> float:
        return left + plot_w * (v - x_lo) / (x_hi - x_lo)

    def py(v: float) -> float:
        return top + plot_h * (1 - (v - y_lo) / (y_hi - y_lo))

    body = [f'<text x="{left}" y="16" {_FONT} font-weight="600">{escape(title)}</text>',
            *_y_grid(y_ticks, py, left, width - right)]
    if x_names:
        step = max(1, len(x_names) // 30)
        for i, name in enumerate(x_names[::step]):
            short = name if len(name) <= 20 else "…" + name[-19:]
            body.append(f'<text transform="translate({px(i * step):.1f},{top + plot_h + 10}) rotate(35)" {_FONT}>{escape(short)}</text>')
    else:
        x_ticks = _nice(x_lo, x_hi)[2]
        for t in x_ticks:
            if x_lo <= t <= x_hi:
                body.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle" {_FONT}>{_tick_label(t, x_ticks)}</text>')
    if x_label:
        body.append(f'<text x="{left + plot_w / 2}" y="{height - 22}" text-anchor="middle" {_FONT}>{escape(x_label)}</text>')
    if y_label:
        body.append(f'<text transform="translate(12,{top + plot_h / 2}) rotate(-90)" text-anchor="middle" {_FONT}>{escape(y_label)}</text>')
    for si, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[si % len(PALETTE)]
        points = [(x, v) for x, v in zip(xs, ys, strict=True) if math.isfinite(v)]
        if len(points) > 1:
            path = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in points)
            body.append(f'<polyline class="mark" points="{path}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
        for x, v in points:
            a, b = px(x), py(v)
            body.append(f'<circle class="mark" cx="{a:.1f}" cy="{b:.1f}" r="2.6" fill="{colour}">'
                        f"<title>{escape(name)}: {_fmt(x)} → {_fmt(v)}</title></circle>")
    body += _legend(list(series), left, height - 6)
    return _frame(width, height, title, body)
