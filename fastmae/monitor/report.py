"""Self-contained HTML reports and heatmap pictures. Every string that comes from the user's
data (file, folder and class names, reasons) goes through html.escape; pictures are inlined as
base64 PNG data URIs and charts as inline SVG, so the page loads nothing from anywhere."""
from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

# A perceptually ordered colour ramp (dark blue -> cyan -> yellow -> red) for heatmaps.
_RAMP = np.array([[0, 0, 64], [0, 64, 192], [0, 192, 224], [128, 224, 96], [255, 224, 0],
                  [255, 96, 0], [200, 0, 0]], dtype=np.float64)


def colourise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through the ramp, lo..hi mapped onto its ends."""
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(int), len(_RAMP) - 2)
    f = (t - i)[..., None]
    return (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.uint8)


def heatmap_picture(image: np.ndarray, heat: np.ndarray, lo: float, hi: float, scale: int = 3,
                    alpha: float = 0.5) -> Image.Image:
    """The image, and the heatmap blended over it, side by side, enlarged `scale` times."""
    if heat.shape != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize(
            (image.shape[1], image.shape[0]), Image.BILINEAR))
    over = (image * (1 - alpha) + colourise(heat, lo, hi) * alpha).astype(np.uint8)
    both = np.concatenate([image, np.full((image.shape[0], 2, 3), 255, np.uint8), over], axis=1)
    pic = Image.fromarray(both, "RGB")
    return pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)


def png_data_uri(pic: Image.Image) -> str:
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def histogram_svg(series: dict, threshold: float | None = None, bins: int = 30, width: int = 560,
                  height: int = 220, xlabel: str = "score") -> str:
    """Overlaid density histograms of named value arrays, as an inline SVG."""
    colours = ["#3b6fb6", "#d9534f", "#5cb85c", "#f0ad4e"]
    values = [np.asarray(v, dtype=np.float64) for v in series.values() if len(v)]
    if not values:
        return "<p>(no values)</p>"
    allv = np.concatenate(values + ([np.array([threshold])] if threshold is not None else []))
    lo, hi = float(allv.min()), float(allv.max())
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    pad, w, h = 40, width - 50, height - 50
    dens = {k: np.histogram(np.asarray(v, dtype=np.float64), edges, density=True)[0]
            for k, v in series.items() if len(v)}
    top = max(float(d.max()) for d in dens.values()) or 1.0
    parts = [f'<svg width="{width}" height="{height}">',
             f'<rect x="{pad}" y="10" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>']
    bw = w / bins
    for ci, (name, d) in enumerate(dens.items()):
        c = colours[ci % len(colours)]
        for i, v in enumerate(d):
            bh = h * v / top
            parts.append(f'<rect x="{pad + i * bw:.1f}" y="{10 + h - bh:.1f}" width="{bw:.1f}" '
                         f'height="{bh:.1f}" fill="{c}" fill-opacity="0.45"/>')
        parts.append(f'<rect x="{pad + 10}" y="{18 + 16 * ci}" width="10" height="10" fill="{c}"/>'
                     f'<text x="{pad + 25}" y="{27 + 16 * ci}" font-size="11">{esc(name)}</text>')
    if threshold is not None:
        tx = pad + w * (threshold - lo) / (hi - lo)
        parts.append(f'<line x1="{tx:.1f}" y1="10" x2="{tx:.1f}" y2="{10 + h}" stroke="#000" '
                     'stroke-dasharray="4,3"/>'
                     f'<text x="{tx + 3:.1f}" y="{22 + h - 20}" font-size="10">threshold</text>')
    parts.append(f'<text x="{pad}" y="{height - 20}" font-size="10">{lo:.3g}</text>'
                 f'<text x="{pad + w - 30}" y="{height - 20}" font-size="10">{hi:.3g}</text>'
                 f'<text x="{pad + w / 2 - 20}" y="{height - 5}" font-size="11">{esc(xlabel)}</text></svg>')
    return "".join(parts)


def scatter_svg(series: dict, width: int = 420, height: int = 320) -> str:
    """A 2-D scatter of named (N, 2) arrays (the embedding PCA), as an inline SVG."""
    colours = ["#3b6fb6", "#d9534f"]
    pts = [np.asarray(v, dtype=np.float64) for v in series.values() if len(v)]
    allp = np.concatenate(pts)
    lo, hi = allp.min(0), allp.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    pad = 20
    parts = [f'<svg width="{width}" height="{height}">',
             f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" '
             'fill="#fafafa" stroke="#ccc"/>']
    for ci, (name, v) in enumerate(series.items()):
        c = colours[ci % len(colours)]
        for x, y in np.asarray(v, dtype=np.float64):
            px = pad + (width - 2 * pad) * (x - lo[0]) / span[0]
            py = height - pad - (height - 2 * pad) * (y - lo[1]) / span[1]
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{c}" fill-opacity="0.6"/>')
        parts.append(f'<text x="{pad + 6}" y="{pad + 14 + 14 * ci}" font-size="11" fill="{c}">'
                     f'{esc(name)}</text>')
    return "".join(parts) + "</svg>"


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px}"
          ".card{display:inline-block;margin:6px;vertical-align:top;font-size:12px;max-width:400px;"
          "word-break:break-all}.flag{color:#b00;font-weight:bold}")


def page(title: str, sections: list[str]) -> str:
    """A complete HTML document. `sections` are HTML fragments built by this module's callers
    with every user string already escaped."""
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1>" + "\n".join(sections) + "</body></html>\n")


def table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{esc(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(k)))}</td>" for k in keys) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def card(pic_uri: str, caption_lines: list[str], flagged: bool = False) -> str:
    cls = ' class="flag"' if flagged else ""
    caption = "<br>".join(esc(c) for c in caption_lines)
    return f'<div class="card"><img src="{pic_uri}" alt=""><br><span{cls}>{caption}</span></div>'
