"""A benchmark results dict as a table on screen, a JSON file and a bar chart."""
import json
import os

from ..files import atomic_save_file


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def table(res: dict) -> str:
    cfg = res["config"]
    head = (f"{cfg['model']}  {cfg['img_size']}px  batch {cfg['batch_size']}  mask {cfg['mask_ratio']}  "
            f"{cfg['precision']}  on {res['device']}")
    cols = ("contender", "img/s", "step ms", "p25-p75 ms", "vs ref", "peak MB", "TFLOP/s", "MFU",
            "attn", "kernels")
    rows = []
    for r in res["results"]:
        s = r["step_ms_spread"]
        rows.append((
            r["name"],
            _fmt(r["img_per_s"], ".1f"),
            _fmt(r["step_ms"], ".2f"),
            f"{s['p25']:.2f}-{s['p75']:.2f}",
            _fmt(r["speedup_vs_reference"], ".2f") + ("x" if r["speedup_vs_reference"] else ""),
            _fmt(r["peak_mem_mb"], ".0f"),
            _fmt(r["model_tflops"], ".3g"),
            _fmt(r["mfu"] * 100 if r["mfu"] is not None else None, ".1f") + ("%" if r["mfu"] else ""),
            r["attn_backend"],
            r["kernels"],
        ))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [head, line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    mem = res["results"][0]["peak_mem_kind"] if res["results"] else None
    out.append({"cuda_max_allocated": "peak MB: torch.cuda.max_memory_allocated (resident state + step peak)",
                "cpu_rss_peak_delta": "peak MB: CPU RSS peak delta during the timed steps (not the weights)",
                None: "peak MB: not measurable here"}[mem])
    out.append(f"{cfg['flops_per_img'] / 1e9:.2f} GFLOP per image per step (3 x forward); MFU against "
               + (f"the {cfg['peak_tflops_source']} peak, {cfg['peak_tflops']} TFLOP/s" if cfg["peak_tflops"]
                  else "no known peak (give --peak-tflops)"))
    out.append("attention per module (encoder/decoder): " + ", ".join(
        f"{r['name']} {r['attn']['encoder']}/{r['attn']['decoder']}" for r in res["results"] if "attn" in r))
    for name, why in res.get("left_out", {}).items():
        out.append(f"left out: {name} ({why})")
    for r in res["results"]:
        if "max_batch" in r:
            out.append(f"largest batch that fits: {r['name']} {r['max_batch']}")
    return "\n".join(out)


def write_json(res: dict, path: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2, allow_nan=False)
            f.write("\n")
    atomic_save_file(write, path)


def plot(res: dict, path: str) -> str | None:
    """Bar chart of img/s per contender (quartile error bars), labelled with the
    ratio to the reference contender. Without matplotlib: None and a PictureSkipped warning."""
    from ..pictures import matplotlib_missing, skip_picture
    why = matplotlib_missing()
    if why:
        skip_picture(path, why)
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["results"]
    names = [r["name"] for r in rows]
    ips = [r["img_per_s"] for r in rows]
    lo = [r["img_per_s"] - r["img_per_s_spread"]["p75"] for r in rows]  # slower quartile
    hi = [r["img_per_s_spread"]["p25"] - r["img_per_s"] for r in rows]
    colors = {"fastmae": "#2a7ab0", "fastmae-compiled": "#1b5e8a", "fastmae-compiled-blocks": "#5fa3cf",
              "reference": "#8c8c8c", "hf": "#e08a2c"}
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(rows) + 2), 4.2), dpi=120)
    bars = ax.bar(names, ips, yerr=[lo, hi], capsize=4,
                  color=[colors.get(r["name"], "#555") for r in rows])
    for bar, r, top in zip(bars, rows, hi):
        ratio = r["speedup_vs_reference"]
        label = f"{r['img_per_s']:.0f} img/s" + (f"\n{ratio:.2f}x ref" if ratio is not None else "")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height() + top),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    cfg = res["config"]
    ax.set_ylabel("images / s (training step)")
    ax.set_xlabel(f"median of {rows[0]['steps_timed']} timed steps each, interleaved; whiskers: quartiles",
                  fontsize=8)
    ax.set_ylim(0, max(v + h for v, h in zip(ips, hi)) * 1.25)
    ax.set_title(f"MAE pretraining step: {cfg['model']}, {cfg['img_size']}px, batch {cfg['batch_size']}, "
                 f"{cfg['precision']}\n{res['device']}", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fmt = os.path.splitext(path)[1][1:].lower()
    atomic_save_file(lambda tmp: fig.savefig(tmp, format=fmt), path)
    plt.close(fig)
    return path
