"""The evaluation report: metrics.json for tools, froc.png and a self-contained report.html for people.

Why HTML: it opens anywhere, prints, and can be attached to a validation record without meddet installed.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

MAX_OVERLAYS = 4


def plot_froc(metrics: dict[str, Any], path: Path) -> Path:
    froc = metrics["froc"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    curve = froc["curve"]
    ax.step(curve["fps_per_scan"], curve["sensitivity"], where="post", color="tab:blue", label="FROC")
    ax.plot(froc["fp_rates"], froc["sensitivity"], "o", color="tab:red", label="LUNA16 points")
    if "sensitivity_ci95" in froc:
        low, high = zip(*froc["sensitivity_ci95"])
        ax.fill_between(froc["fp_rates"], low, high, color="tab:red", alpha=0.15, label="bootstrap 95% CI")
    ax.set_xscale("log")
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"FROC — CPM {froc['cpm']:.3f} ({froc['num_nodules']} nodules, {froc['num_scans']} scans)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(metrics: dict[str, Any], out: Path, pred_dir: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_froc(metrics, out / "froc.png")
    overlays = []
    for row in metrics["per_case"][:MAX_OVERLAYS]:
        for candidate in (pred_dir / row["case"], pred_dir / f"{row['case']}_0000", pred_dir):
            if (candidate / "overlay.png").is_file():
                target = out / f"overlay_{row['case']}.png"
                shutil.copyfile(candidate / "overlay.png", target)
                overlays.append((row["case"], target.name))
                break
    froc = metrics["froc"]
    op = metrics["operating_point"]
    froc_rows = [{"FPs/scan": r, "sensitivity": s, "95% CI": froc.get("sensitivity_ci95", [None] * 7)[i]}
                 for i, (r, s) in enumerate(zip(froc["fp_rates"], froc["sensitivity"]))]
    size_rows = [{"size": k, **v} for k, v in op["by_size"].items()]
    group_rows = [{"group": f"{key[3:]}={name}", **v} for key in ("by_type", "by_location") for name, v in op.get(key, {}).items()]
    latency_rows = [{"stage": k, **v} for k, v in metrics["latency_s"].items()]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>meddet evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>meddet evaluation</h1>
<p>{metrics['cases']} scans, {froc['num_nodules']} nodules. <b>CPM {froc['cpm']:.3f}</b>
(95% CI {froc.get('cpm_ci95', '—')}); sensitivity {op['sensitivity']} at {op['false_positives_per_scan']} false positives per scan
(all reported lesions); mean Dice {metrics['segmentation']['dice_mean']}, mean HD95 {metrics['segmentation']['hd95_mm_mean']} mm.
Hit rule: LUNA16 (centre within the nodule radius; 3 mm for nodules under 6 mm; duplicate hits ignored).</p>
<h2>FROC</h2><img src="froc.png" alt="FROC curve">{_table(froc_rows)}
<h2>Sensitivity by size</h2>{_table(size_rows)}
<h2>Sensitivity by type and location</h2>{_table(group_rows)}
<h2>Latency (s)</h2>{_table(latency_rows)}
<h2>Per case</h2>{_table(metrics['per_case'])}
<h2>Overlays</h2>{''.join(f'<h3>{html.escape(c)}</h3><img src="{html.escape(n)}">' for c, n in overlays) or '<p>none</p>'}
</body></html>"""
    path = out / "report.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path


def format_table(metrics: dict[str, Any]) -> Table:
    froc = metrics["froc"]
    op = metrics["operating_point"]
    table = Table(title=f"meddet evaluation: {metrics['cases']} scans, {froc['num_nodules']} nodules")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("CPM", f"{froc['cpm']:.3f}" + (f"  (95% CI {froc['cpm_ci95'][0]:.3f}–{froc['cpm_ci95'][1]:.3f})" if "cpm_ci95" in froc else ""))
    for rate, sens in zip(froc["fp_rates"], froc["sensitivity"]):
        table.add_row(f"sensitivity @ {rate:g} FP/scan", f"{sens:.3f}")
    table.add_row("sensitivity (all reported)", str(op["sensitivity"]))
    table.add_row("false positives / scan", str(op["false_positives_per_scan"]))
    for name, v in op["by_size"].items():
        table.add_row(f"sensitivity {name}", "—" if v["sensitivity"] is None else f"{v['sensitivity']:.3f} (n={v['nodules']})")
    table.add_row("Dice (mean)", str(metrics["segmentation"]["dice_mean"]))
    table.add_row("HD95 mm (mean)", str(metrics["segmentation"]["hd95_mm_mean"]))
    if "total" in metrics["latency_s"]:
        t = metrics["latency_s"]["total"]
        table.add_row("latency s (median / p90)", f"{t['median']:.2f} / {t['p90']:.2f}")
    return table
