"""Does the phantom look and measure like a real CT?

Renders a few slices of full-size phantom cases (lung window WW1500/WL−600, and a soft-tissue window) to PNG, and
compares image statistics with a real CT (the head CT fetched by /work/shared/real-data/get.sh):

- noise: the median local standard deviation (7×7 in-plane windows) in homogeneous soft tissue and in air outside
  the body. Local windows remove anatomy so what is left is noise (plus fine texture in the real scan);
- HU histograms: where the air, fat and soft-tissue peaks sit, and the shape of the distribution.

Usage::

    .venv/bin/python benchmarks/phantom_realism.py [--seeds 3 11] [--out out/phantom_realism] [--docs]

``--docs`` also writes the figure used in docs/phantom.md (docs/img/phantom_slices.png). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
GET_REAL = Path("/work/shared/real-data/get.sh")
HEAD_SHAPE = (108, 256, 256)


def load_head_ct() -> np.ndarray | None:
    """The real head CT (int16 HU, (108, 256, 256), coronal slices), or None when it cannot be fetched."""
    try:
        cache = subprocess.run(["bash", str(GET_REAL)], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"real head CT unavailable: {exc}")
        return None
    path = Path(cache.splitlines()[-1]) / "head_ct" / "matrix.dat"
    data = np.fromfile(path, dtype="<i2")
    return data[: int(np.prod(HEAD_SHAPE))].reshape(HEAD_SHAPE)


def local_std(img: np.ndarray, size: int = 7) -> np.ndarray:
    """Standard deviation in size×size in-plane windows (axis 0 is the slice axis)."""
    x = img.astype(np.float64)
    m = ndimage.uniform_filter(x, (1, size, size))
    m2 = ndimage.uniform_filter(x * x, (1, size, size))
    return np.sqrt(np.maximum(m2 - m * m, 0))


def noise_stats(img: np.ndarray) -> dict:
    """Noise in homogeneous soft tissue (0–80 HU) and in air outside the body (< −900 HU), from local windows."""
    ls = local_std(img)
    soft = ndimage.binary_erosion((img > 0) & (img < 80), structure=np.ones((1, 7, 7), bool))
    body = ndimage.binary_fill_holes(img > -500)
    air = ndimage.binary_erosion(~body, structure=np.ones((1, 15, 15), bool)) & (img < -900)
    out = {}
    for name, m in (("soft_tissue", soft), ("air", air)):
        out[name] = {
            "voxels": int(m.sum()),
            "median_local_std_hu": round(float(np.median(ls[m])), 2) if m.any() else None,
            "mean_hu": round(float(img[m].mean()), 1) if m.any() else None,
        }
    return out


def histogram_peaks(img: np.ndarray) -> dict:
    """Modes of the HU histogram in the air, fat and soft-tissue ranges, and bone fraction of the body."""
    body = ndimage.binary_fill_holes(img > -500)
    h, edges = np.histogram(img, bins=np.arange(-1100, 1601, 5))
    centres = (edges[:-1] + edges[1:]) / 2

    def mode(lo, hi):
        m = (centres >= lo) & (centres < hi)
        return float(centres[m][np.argmax(h[m])])

    return {
        "air_mode_hu": mode(-1100, -900),
        "fat_mode_hu": mode(-150, -50),
        "soft_tissue_mode_hu": mode(-20, 100),
        "bone_fraction_of_body": round(float(np.mean(img[body] > 300)), 4),
    }


def render(args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meddet.phantom import generate_case

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = load_head_ct()
    summary = {"phantom": {}, "real_head_ct": None}
    if head is not None:
        summary["real_head_ct"] = {"noise": noise_stats(head), "histogram": histogram_peaks(head)}

    cases = []
    for seed in args.seeds:
        t0 = time.time()
        case = generate_case(seed, small=False)
        dt = time.time() - t0
        img = case.image.array
        cases.append(case)
        summary["phantom"][str(seed)] = {
            "generate_s": round(dt, 2),
            "shape": list(img.shape),
            "spacing": [round(s, 4) for s in case.image.spacing],
            "noise_sigma_hu_nominal": case.info["noise_sigma_hu"],
            "noise_corr_px": case.info["noise_corr_px"],
            "noise": noise_stats(img),
            "histogram": histogram_peaks(img),
            "lesions": len(case.lesions),
        }
        # Slices: 30 %, 55 %, 75 % of the scan height, plus the largest lesion's slice.
        nz = img.shape[0]
        ks = [int(nz * f) for f in (0.3, 0.55, 0.75)]
        if case.lesions:
            big = max(case.lesions, key=lambda les: les["diameter_mm"])
            ks.append(int(np.rint(case.image.lps_to_index_zyx([big["center_mm"]])[0][0])))
        fig, axes = plt.subplots(2, len(ks), figsize=(4.2 * len(ks), 8.4))
        for i, k in enumerate(ks):
            axes[0, i].imshow(img[k], cmap="gray", vmin=-1350, vmax=150)
            axes[0, i].set_title(f"seed {seed}, slice {k} (lung window)", fontsize=8)
            axes[1, i].imshow(img[k], cmap="gray", vmin=-160, vmax=240)
            axes[1, i].set_title("soft-tissue window W400/L40", fontsize=8)
            if case.lesions and i == len(ks) - 1:
                axes[0, i].contour(case.labels.array[k] > 0, [0.5], colors="r", linewidths=0.6)
            for a in axes[:, i]:
                a.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"phantom_seed{seed}_slices.png", dpi=90)
        plt.close(fig)
        plt.imsave(out / f"phantom_seed{seed}_lung_window.png", img[ks[1]], cmap="gray", vmin=-1350, vmax=150)

    # Histograms: phantom(s) and the real CT on one plot.
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.arange(-1100, 1601, 10)
    for seed, case in zip(args.seeds, cases):
        ax.hist(case.image.array.ravel(), bins=bins, histtype="step", density=True, log=True, label=f"phantom {seed}")
    if head is not None:
        ax.hist(head.ravel(), bins=bins, histtype="step", density=True, log=True, label="real head CT", color="k")
    ax.set_xlabel("HU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "hu_histograms.png", dpi=90)
    plt.close(fig)

    if args.docs and cases:
        docs_img = REPO / "docs" / "img"
        docs_img.mkdir(parents=True, exist_ok=True)
        case = cases[0]
        img = case.image.array
        nz = img.shape[0]
        ks = [int(nz * 0.35), int(nz * 0.6)]
        if case.lesions:  # show the largest nodule in the second panel
            big = max(case.lesions, key=lambda les: les["diameter_mm"])
            ks[1] = int(np.rint(case.image.lps_to_index_zyx([big["center_mm"]])[0][0]))
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6))
        for a, k in zip(axes[:2], ks):
            a.imshow(img[k], cmap="gray", vmin=-1350, vmax=150)
            a.set_title(f"slice {k}, lung window W1500/L−600", fontsize=9)
            if (case.labels.array[k] > 0).any():
                a.contour(case.labels.array[k] > 0, [0.5], colors="r", linewidths=0.6)
        axes[2].imshow(img[ks[1]], cmap="gray", vmin=-160, vmax=240)
        axes[2].set_title("same slice, soft-tissue window W400/L40", fontsize=9)
        for a in axes:
            a.axis("off")
        fig.suptitle(f"meddet phantom, seed {args.seeds[0]}: {img.shape[2]}×{img.shape[1]}, "
                     f"{case.image.spacing[0]:.3f} mm pixels, {case.image.spacing[2]:.2f} mm slices", fontsize=10)
        fig.tight_layout()
        fig.savefig(docs_img / "phantom_slices.png", dpi=80)
        plt.close(fig)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 11])
    ap.add_argument("--out", default=str(REPO / "out" / "phantom_realism"))
    ap.add_argument("--docs", action="store_true", help="also write docs/img/phantom_slices.png")
    args = ap.parse_args()
    print(json.dumps(render(args), indent=1))


if __name__ == "__main__":
    main()
