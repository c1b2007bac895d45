"""What a label curve says: the mean and spread of each (budget, arm) point, the "labels
saved" (for each accuracy the scratch arm reaches, the labels per class the pretrained arm
needed for it, interpolated log-linearly between budgets), a markdown table and a picture.
Pure functions of the finished runs, so a partial curve can be summarised at any time."""
from __future__ import annotations

import math
import statistics
import warnings

ARMS = ("pretrained", "scratch")


def summarise(runs: list[dict], budgets: list[int | None], per_class_all: float) -> list[dict]:
    """One row per (budget, arm) with at least one run: mean, std (sample, 0 for one run),
    min, max and the runs' accuracies. `per_class_all` places the "all" budget on the x axis."""
    rows = []
    for b in budgets:
        for arm in ARMS:
            accs = [r["acc1"] for r in runs if r["labels_per_class"] == b and r["arm"] == arm]
            if not accs:
                continue
            rows.append({"labels_per_class": b, "x": float(b if b is not None else per_class_all),
                         "arm": arm, "n": len(accs), "mean": statistics.fmean(accs),
                         "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "min": min(accs), "max": max(accs), "acc1": accs})
    return rows


def labels_needed(target: float, curve: list[tuple[float, float]]) -> tuple[float | None, str]:
    """The smallest labels per class at which a curve [(x, mean acc)] sorted by x reaches
    `target`, interpolating linearly in log(x) between neighbouring budgets. Returns
    (x, how): how is "interpolated", "at or below the smallest budget" (x is then an upper
    bound) or "not reached" (x None)."""
    if not curve:
        return None, "not reached"
    if curve[0][1] >= target:
        return curve[0][0], "at or below the smallest budget"
    for (x0, a0), (x1, a1) in zip(curve, curve[1:]):
        if a0 < target <= a1:
            t = (target - a0) / (a1 - a0)
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0))), "interpolated"
    return None, "not reached"


def labels_saved(rows: list[dict]) -> list[dict]:
    """For each scratch point: its accuracy, the pretrained labels per class that reach it,
    and the ratio scratch labels / pretrained labels (>1: pretraining saves labels)."""
    pre = sorted((r["x"], r["mean"]) for r in rows if r["arm"] == "pretrained")
    out = []
    for r in sorted((r for r in rows if r["arm"] == "scratch"), key=lambda r: r["x"]):
        need, how = labels_needed(r["mean"], pre)
        out.append({"scratch_labels_per_class": r["labels_per_class"], "scratch_x": r["x"],
                    "scratch_acc1": r["mean"], "pretrained_labels_per_class": need, "how": how,
                    "labels_saved_per_class": None if need is None else r["x"] - need,
                    "ratio": None if need is None or need <= 0 else r["x"] / need})
    return out


def within_noise(rows: list[dict], val_images: int | None) -> float | None:
    """The standard error when every pretrained-minus-scratch gain is under 2 standard errors
    of one held-out accuracy (the curve cannot tell the arms apart), else None."""
    if not val_images or not rows:
        return None
    se = max(standard_error(r["mean"], val_images) for r in rows)
    by = {(r["labels_per_class"], r["arm"]): r["mean"] for r in rows}
    gains = [by[(b, "pretrained")] - by[(b, "scratch")] for b, a in by if a == "scratch" and (b, "pretrained") in by]
    return se if gains and all(abs(g) < 2 * se for g in gains) else None


def headline(saved: list[dict], noise_se: float | None = None) -> str:
    """One sentence for a manager: the largest scratch budget that the pretrained arm matches
    (with a warning when within_noise() says the arms cannot be told apart)."""
    text = _headline(saved)
    if noise_se is not None:
        text += (f"; but every gain is under 2 standard errors ({noise_se:.1f} points each) of one held-out "
                 "accuracy, so this is noise, not a measured saving")
    return text


def _headline(saved: list[dict]) -> str:
    hits = [s for s in saved if s["pretrained_labels_per_class"] is not None]
    if not saved:
        return "no scratch runs yet"
    if not hits:
        return "the pretrained arm reached none of the scratch arm's accuracies at the budgets run"
    s = max(hits, key=lambda s: s["scratch_x"])
    bound = "at most " if s["how"].startswith("at or below") else "about "
    return (f"the scratch model reaches {s['scratch_acc1']:.1f}% with {_budget(s)} labels per class; "
            f"the pretrained model needs {bound}{s['pretrained_labels_per_class']:.1f} "
            f"({s['ratio']:.1f}x fewer labels)")


def _budget(s: dict) -> str:
    b = s["scratch_labels_per_class"]
    return f"all ({s['scratch_x']:.0f})" if b is None else str(b)


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error (points of %) of a top-1 accuracy measured on n images."""
    p = min(max(acc / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / max(n, 1))


def markdown(rows: list[dict], saved: list[dict], title: str, val_images: int | None = None) -> str:
    noise_se = within_noise(rows, val_images)
    by = {(r["labels_per_class"], r["arm"]): r for r in rows}
    budgets = list(dict.fromkeys(r["labels_per_class"] for r in rows))
    lines = [f"# {title}", "", "| labels per class | pretrained top-1 (%) | scratch top-1 (%) | gain | runs |",
             "|---|---|---|---|---|"]
    for b in budgets:
        p, s = by.get((b, "pretrained")), by.get((b, "scratch"))
        name = str(b) if b is not None else f"all ({(p or s)['x']:.0f})"
        cell = lambda r: f"{r['mean']:.1f} ± {r['std']:.1f}" if r else "-"  # noqa: E731
        gain = f"{p['mean'] - s['mean']:+.1f}" if p and s else "-"
        lines.append(f"| {name} | {cell(p)} | {cell(s)} | {gain} | {max((p or s)['n'], (s or p)['n'])} |")
    lines += ["", "± is the standard deviation over seeds. Top-1 after the last epoch (no model selection "
              "on the held-out images).", "", "## Labels saved", "",
              "| scratch: labels per class | scratch top-1 (%) | pretrained needs | x fewer labels |",
              "|---|---|---|---|"]
    for s in saved:
        need = s["pretrained_labels_per_class"]
        if need is None:
            cell, ratio = "not reached", "-"
        else:
            cell = f"{'≤ ' if s['how'].startswith('at or below') else '≈ '}{need:.1f}"
            ratio = f"{'≥ ' if s['how'].startswith('at or below') else ''}{s['ratio']:.1f}"
        lines.append(f"| {_budget(s)} | {s['scratch_acc1']:.1f} | {cell} | {ratio} |")
    lines += ["", f"**{headline(saved, noise_se)}.**", "",
              "Pretrained labels are interpolated linearly in log(labels per class) between the "
              "pretrained arm's mean accuracies."]
    if val_images and rows:
        se = max(standard_error(r["mean"], val_images) for r in rows)
        lines += ["", f"Noise: one accuracy on {val_images} held-out images has a binomial standard error "
                  f"of up to ±{se:.1f} points; gains smaller than about {2 * se:.1f} points, and the labels "
                  "saved that rest on them, are within noise (more seeds narrow the means, not this error)."]
    lines.append("")
    return "\n".join(lines)


def save_plot(rows: list[dict], path, title: str, arm_names: dict | None = None) -> bool:
    """curve.png: top-1 against labels per class (log axis), both arms with std error bars.
    Returns False (with a warning) when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn("matplotlib is not installed: curve.png skipped (pip install matplotlib)")
        return False
    from ..files import atomic_save_file

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for arm, style in zip(ARMS, ("o-", "s--")):
        pts = sorted((r["x"], r["mean"], r["std"]) for r in rows if r["arm"] == arm)
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style,
                        capsize=3, label=(arm_names or {}).get(arm, arm))
    ax.set_xscale("log")
    xs = sorted({r["x"] for r in rows})
    ax.set_xticks(xs)
    ax.set_xticklabels([str(r["labels_per_class"]) if r["labels_per_class"] is not None else f"all\n({x:.0f})"
                        for x in xs for r in [next(r for r in rows if r["x"] == x)]])
    ax.minorticks_off()
    ax.set_xlabel("labelled images per class (log scale)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save_file(lambda tmp: fig.savefig(tmp, format="png"), path)
    return True
