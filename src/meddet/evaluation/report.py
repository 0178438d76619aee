"""The evaluation report: metrics.json for tools, froc.png and a self-contained report.html for people.

Why HTML: it opens anywhere, prints, and can be attached to a validation record without meddet installed. It has no
scripts, fonts or style sheets from elsewhere; the FROC image sits beside it and the overlays are linked by relative
path to the prediction folders (so the report stays small and shows the very files ``meddet predict`` wrote).
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

MAX_OVERLAYS = 4
FROC_X_RANGE = (1 / 16, 16)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(interval: list[float] | None, digits: int = 3) -> str:
    return f"{interval[0]:.{digits}f}–{interval[1]:.{digits}f}" if interval else "—"


def _finite(obj: Any) -> Any:
    """NaN/inf → None, so metrics.json is strict JSON (``NaN`` is not, and breaks other tools' parsers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def plot_froc(metrics: dict[str, Any], path: Path) -> Path:
    """Log-x FROC curve (interpolated like the scores), the seven LUNA16 points with their intervals, the band."""
    froc = metrics["froc"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    if froc["num_nodules"]:
        grid = np.geomspace(*FROC_X_RANGE, 400)
        curve = froc["curve"]
        ax.plot(grid, np.interp(grid, curve["fps_per_scan"], curve["sensitivity"]), color="tab:blue", lw=2, label="FROC")
        if "band" in froc:
            band = froc["band"]
            ax.fill_between(band["fps_per_scan"], band["low"], band["high"], color="tab:blue", alpha=0.15,
                            label=f"bootstrap 95% band ({froc['bootstrap']['draws']} draws)")
        rates, sens = np.array(froc["fp_rates"]), np.array(froc["sensitivity"])
        if "sensitivity_ci95" in froc:
            low, high = np.array(froc["sensitivity_ci95"]).T
            ax.errorbar(rates, sens, yerr=[np.clip(sens - low, 0, None), np.clip(high - sens, 0, None)], fmt="o",
                        color="tab:red", capsize=3, label="LUNA16 points")
        else:
            ax.plot(rates, sens, "o", color="tab:red", label="LUNA16 points")
        ci = f" (95% CI {_ci(froc.get('cpm_ci95'))})" if "cpm_ci95" in froc else ""
        ax.set_title(f"FROC: CPM {froc['cpm']:.3f}{ci}\n{froc['num_nodules']} nodules, {froc['num_scans']} scans", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no nodules in the ground truth: sensitivity undefined", ha="center", transform=ax.transAxes)
        ax.set_title(f"FROC: {froc['num_scans']} scans, no nodules", fontsize=10)
    ax.set_xscale("log", base=2)
    ax.set_xlim(*FROC_X_RANGE)
    ax.set_xticks(froc["fp_rates"], [f"{r:g}" for r in froc["fp_rates"]])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(rows: list[dict[str, Any]], caption: str | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k in keys) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def overall_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers with their intervals, shared by the HTML report and the terminal table."""
    froc, op, seg = metrics["froc"], metrics["operating_point"], metrics["segmentation"]
    ci = froc.get("sensitivity_ci95", [None] * len(froc["fp_rates"]))
    undefined = froc["num_nodules"] == 0
    rows = [{"metric": "CPM (mean sensitivity at 1/8–8 FPs/scan)", "value": None if undefined else froc["cpm"],
             "95% CI": _ci(froc.get("cpm_ci95"))}]
    rows += [{"metric": f"sensitivity at {r:g} FP/scan", "value": None if undefined else s, "95% CI": _ci(c)}
             for r, s, c in zip(froc["fp_rates"], froc["sensitivity"], ci)]
    large = metrics.get("froc_6mm")
    if large is not None and large["num_nodules"]:
        at_one = large["fp_rates"].index(1.0) if 1.0 in large["fp_rates"] else None
        rows.append({"metric": f"nodules ≥ 6 mm ({large['num_nodules']}): CPM", "value": large["cpm"], "95% CI": _ci(large.get("cpm_ci95"))})
        if at_one is not None:
            rows.append({"metric": "nodules ≥ 6 mm: sensitivity at 1 FP/scan", "value": large["sensitivity"][at_one],
                         "95% CI": _ci(large.get("sensitivity_ci95", [None] * len(large["fp_rates"]))[at_one])})
    threshold = f" (score ≥ {op['threshold']:g})" if op["threshold"] else " (all reported lesions)"
    rows += [
        {"metric": f"sensitivity{threshold}", "value": op["sensitivity"], "95% CI": f"{op['detected']}/{op['nodules']} nodules"},
        {"metric": f"false positives per scan{threshold}", "value": op["false_positives_per_scan"], "95% CI": ""},
        {"metric": "Dice (mean / median)", "value": f"{_fmt(seg['dice_mean'])} / {_fmt(seg['dice_median'])}", "95% CI": ""},
        {"metric": "HD95 mm (mean / median)", "value": f"{_fmt(seg['hd95_mm_mean'])} / {_fmt(seg['hd95_mm_median'])}",
         "95% CI": f"undefined in {seg['hd95_undefined_cases']} case(s)"},
    ]
    if "total" in metrics["latency_s"]:
        t = metrics["latency_s"]["total"]
        rows.append({"metric": "latency s (median / p90)", "value": f"{t['median']:.2f} / {t['p90']:.2f}", "95% CI": ""})
    return rows


def _group_rows(op: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"group": f"size {name}", **v} for name, v in op["by_size"].items()]
    for key in ("by_type", "by_location"):
        rows += [{"group": f"{key[3:]} {name}", **v} for name, v in op.get(key, {}).items()]
    return rows


def _relative(target: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return target.resolve().as_uri()


def write_report(metrics: dict[str, Any], out: Path, overlays: Iterable[tuple[str, Path]] = ()) -> Path:
    """Write ``out/metrics.json``, ``out/froc.png`` and ``out/report.html``; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_finite(metrics), indent=1, allow_nan=False))
    plot_froc(metrics, out / "froc.png")
    froc, op, seg = metrics["froc"], metrics["operating_point"], metrics["segmentation"]
    conventions = metrics.get("conventions", {})
    latency_rows = [{"stage": k, **v} for k, v in metrics["latency_s"].items()]
    figures = "".join(
        f'<figure><img src="{html.escape(_relative(path, out))}" alt="overlay {html.escape(case)}">'
        f"<figcaption>{html.escape(case)}</figcaption></figure>"
        for case, path in list(overlays)[:MAX_OVERLAYS]
    ) or "<p>none (no overlay.png in the prediction folders)</p>"
    notes = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in conventions.items())
    warnings = ""
    if metrics.get("failed_cases"):
        warnings += (f"<p class=warn>{metrics['failed_cases']} case(s) failed in `meddet predict` and are scored "
                     "with no predictions.</p>")
    if metrics.get("unpaired_truth_cases"):
        names = ", ".join(metrics["unpaired_truth_cases"][:20])
        warnings += f"<p class=warn>Ground truth without a prediction (not scored): {html.escape(names)}</p>"
    if froc["num_nodules"] == 0:
        warnings += "<p class=warn>The ground truth has no nodules: sensitivities and CPM are undefined.</p>"
    models = "".join(f"<li>{html.escape(describe_model(m))}</li>" for m in metrics.get("models", []))
    if len(metrics.get("models", [])) > 1:
        warnings += "<p class=warn>The predictions come from more than one model or setting: the numbers mix them.</p>"
    group_caption = f"score ≥ {op['threshold']:g}" + ("" if op["threshold"] else " (all reported lesions)")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>meddet evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}caption{{text-align:left;font-weight:bold}}
img{{max-width:100%}}figure{{display:inline-block;width:48%;margin:0 1% 1em 0}}.warn{{color:#a40}}</style></head><body>
<h1>meddet evaluation</h1>
<p>{metrics['cases']} scans, {froc['num_nodules']} nodules, {froc['num_predictions']} predicted lesions
({froc['ignored_hits']} duplicate hits ignored). Both lesion masks empty in {seg['both_empty_cases']} case(s):
Dice 1, HD95 0 there.</p>{warnings}
<p>Predicted by:</p><ul>{models or '<li>not recorded in lesions.json</li>'}</ul>
<h2>Overall</h2>{_table(overall_rows(metrics))}
<h2>FROC</h2><img src="froc.png" alt="FROC curve">
<h2>Sensitivity by size, type and location</h2>{_table(_group_rows(op), group_caption)}
<h2>Per case</h2>{_table(metrics['per_case'])}
<h2>Latency (s)</h2>{_table(latency_rows)}
<h2>Overlays</h2>{figures}
<h2>Conventions</h2><ul>{notes}</ul>
</body></html>"""
    path = out / "report.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page)
    os.replace(tmp, path)  # a half-written report is never left behind
    return path


def describe_model(model: dict[str, Any]) -> str:
    """One line naming a lesions.json ``model`` entry: which weights, with which threshold and mirroring."""
    settings = [f"{k} {model[k]}" for k in ("threshold", "min_volume_mm3", "mirroring", "precision") if k in model]
    return f"{model.get('name', '?')} {model.get('version', '?')}" + (f" ({', '.join(settings)})" if settings else "")


def format_table(metrics: dict[str, Any]) -> Table:
    """The headline numbers as a rich Table, for ``meddet evaluate`` to print."""
    froc, op = metrics["froc"], metrics["operating_point"]
    models = "; ".join(describe_model(m) for m in metrics.get("models", []))
    table = Table(title=f"meddet evaluation: {metrics['cases']} scans, {froc['num_nodules']} nodules",
                  caption=f"predicted by {models}" if models else None)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI / note", justify="right")
    for row in overall_rows(metrics):
        table.add_row(row["metric"], _fmt(row["value"]), str(row["95% CI"]))
    for name, v in op["by_size"].items():
        table.add_row(f"sensitivity {name}", _fmt(v["sensitivity"]), f"{v['detected']}/{v['nodules']}")
    return table
