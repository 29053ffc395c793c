"""The report as one self-contained HTML page: tables and inline SVG charts, nothing fetched.

A small inline script records any script error into ``<body data-errors>``, so a headless
browser test can tell the page rendered cleanly."""

from __future__ import annotations

import html
import time
from collections import OrderedDict

import pyarrow as pa

from auditpipe.lake.report import CHARTS, Report, cell

__all__ = ["render_html"]

_W, _H, _PAD_L, _PAD_B = 760, 240, 48, 40
_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.empty{color:#888;font-style:italic}.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;border:1px solid #eee;padding:8px}figcaption{font-weight:600;margin-bottom:4px}
svg text{font-size:11px;fill:#333}.legend span{display:inline-block;margin-right:10px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""
_ERRORS = ("<script>document.body.dataset.errors='0';window.addEventListener('error',function(e){"
           "var b=document.body;b.dataset.errors=String(Number(b.dataset.errors)+1);"
           "b.dataset.lastError=String(e.message)});</script>")


def render_html(r: Report) -> str:
    title = "auditpipe report" + (f" — host {r.host}" if r.host else "")
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>{_ERRORS}<h1>{html.escape(title)}</h1>",
             f"<p>Events since {html.escape(r.since)}; generated "
             f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(r.generated))}.</p>",
             "<h2>Charts</h2><div class=charts>"]
    for name, (ctitle, _sql) in CHARTS.items():
        parts.append(_chart(name, ctitle, r.charts.get(name)))
    parts.append("</div>")
    for section, table in r.sections:
        parts.append(f"<h2 id={section.name}>{html.escape(section.title.format(top=''))}</h2>{_table(table)}")
    parts.append("</body></html>")
    return "".join(parts)


def _table(t: pa.Table) -> str:
    if t.num_rows == 0:
        return "<p class=empty>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.column_names)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row.values()) + "</tr>"
                   for row in t.to_pylist())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _series(t: pa.Table | None) -> tuple[list[str], OrderedDict[str, dict[str, float]]]:
    """(labels in order, {series: {label: value}}) from (t, series, n) rows."""
    labels: list[str] = []
    series: OrderedDict[str, dict[str, float]] = OrderedDict()
    for row in (t.to_pylist() if t is not None else []):
        label = cell(row["t"])
        if label not in labels:
            labels.append(label)
        series.setdefault(str(row["series"]), {})[label] = float(row["n"] or 0)
    return labels, series


def _chart(name: str, title: str, t: pa.Table | None) -> str:
    """Stacked vertical bars (one bar per label, one colour per series)."""
    labels, series = _series(t)
    cap = f"<figcaption>{html.escape(title)}</figcaption>"
    if not labels:
        return (f"<figure data-chart={name}>{cap}<svg class=chart data-chart={name} width={_W} height=60 role=img>"
                f"<text x=10 y=30>no data in this window</text></svg></figure>")
    totals = [sum(s.get(lab, 0) for s in series.values()) for lab in labels]
    top = max(totals) or 1.0
    plot_w, plot_h = _W - _PAD_L - 10, _H - _PAD_B - 10
    bw = plot_w / len(labels)
    out = [f"<svg class=chart data-chart={name} width={_W} height={_H} viewBox='0 0 {_W} {_H}' role=img>",
           f"<line x1={_PAD_L} y1=10 x2={_PAD_L} y2={10 + plot_h} stroke=#999 />",
           f"<line x1={_PAD_L} y1={10 + plot_h} x2={_W - 10} y2={10 + plot_h} stroke=#999 />",
           f"<text x=4 y=18>{_num(top)}</text><text x=4 y={10 + plot_h}>0</text>"]
    for i, lab in enumerate(labels):
        y = float(10 + plot_h)
        for k, (sname, values) in enumerate(series.items()):
            v = values.get(lab, 0)
            h = plot_h * v / top
            if h > 0:
                y -= h
                out.append(f"<rect class=bar x={_PAD_L + i * bw + 1:.1f} y={y:.1f} width={max(bw - 2, 1):.1f} "
                           f"height={h:.1f} fill={_COLORS[k % len(_COLORS)]}><title>{html.escape(sname)} "
                           f"{html.escape(lab)}: {_num(v)}</title></rect>")
        if len(labels) <= 12 or i % max(1, len(labels) // 8) == 0:
            short = lab if len(lab) <= 22 else "…" + lab[-21:]
            out.append(f"<text x={_PAD_L + i * bw + bw / 2:.1f} y={_H - _PAD_B + 24} text-anchor=middle "
                       f"transform='rotate(-12 {_PAD_L + i * bw + bw / 2:.1f} {_H - _PAD_B + 24})'>"
                       f"{html.escape(short)}</text>")
    out.append("</svg>")
    legend = "".join(f"<span><i style='background:{_COLORS[k % len(_COLORS)]}'></i>{html.escape(s)}</span>"
                     for k, s in enumerate(series))
    return f"<figure data-chart={name}>{cap}{''.join(out)}<div class=legend>{legend}</div></figure>"


def _num(v: float) -> str:
    return f"{v:,.0f}"
