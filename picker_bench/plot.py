"""A dependency-free SVG bar chart, so benchmark results can live next to their numbers."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bar_chart_svg"]

_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759")


def bar_chart_svg(title: str, labels: Sequence[str],
                  series: Sequence[tuple[str, str, Sequence[float]]]) -> str:
    """One panel per series (name, unit, values), bars per label, values printed on the bars."""
    panel_w, panel_h, top, left = 360, 220, 40, 50
    width = left + panel_w * len(series) + 20
    height = top + panel_h + 90
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">'
             f'{escape(title)}</text>']
    for index, (name, unit, values) in enumerate(series):
        x0 = left + index * panel_w
        top_value = max(values) or 1.0
        bar_w = (panel_w - 40) / max(1, len(values))
        parts.append(f'<text x="{x0 + panel_w / 2 - 20}" y="{top + 5}" text-anchor="middle">'
                     f'{escape(name)} ({escape(unit)})</text>')
        for i, (label, value) in enumerate(zip(labels, values, strict=True)):
            h = (panel_h - 30) * value / top_value
            x = x0 + i * bar_w
            y = top + panel_h - h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w * 0.8:.1f}" '
                         f'height="{h:.1f}" fill="{_COLOURS[index % len(_COLOURS)]}"/>')
            parts.append(f'<text x="{x + bar_w * 0.4:.1f}" y="{y - 3:.1f}" '
                         f'text-anchor="middle">{value:.3g}</text>')
            parts.append(f'<text transform="translate({x + bar_w * 0.4:.1f},'
                         f'{top + panel_h + 8}) rotate(40)">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
