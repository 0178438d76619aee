"""The ``meddet`` command-line program.

Why a thin layer: every command only parses options and calls a library function, so what the CLI does can be done
from Python the same way. Bad input (``MeddetInputError``) is printed as a plain message with exit code 2, and so is
a file-system refusal (``OSError`` naming a path: a file where an output folder should go, a read-only or full
disk), which the user fixes, not the code; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from meddet.errors import MeddetInputError
from meddet.runtime import keep_freed_memory

app = typer.Typer(
    help="meddet: lesion detection in medical images — DICOM in, validated lesions and masks out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_INPUT_ERROR = 2


@app.command()
def info(
    path: Path = typer.Argument(..., help="DICOM folder, DICOM zip or file, NIfTI, NRRD or MHA file."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID to read when a folder holds several."),
) -> None:
    """Print what meddet sees in a scan: series, geometry, orientation, intensity range and warnings."""
    from meddet.info import describe

    describe(path, series, console)


@app.command()
def convert(
    source: Path = typer.Argument(..., help="Input scan (any format `meddet info` reads)."),
    target: Path = typer.Argument(..., help="Output: .nii.gz, .nrrd, .mha, or a folder name for a DICOM CT series."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID to read when a folder holds several."),
    correct_tilt: bool = typer.Option(False, "--correct-tilt", help="Resample a gantry-tilted series onto an orthogonal grid."),
) -> None:
    """Convert a scan between DICOM, NIfTI, NRRD and MHA, keeping its geometry."""
    from meddet.io import read_volume, write_volume
    from meddet.preprocess.resample import correct_tilt as deshear

    volume = read_volume(source, series_uid=series)
    if correct_tilt:
        volume = deshear(volume)
    written = write_volume(volume, target)
    console.print(f"Wrote {written} ({'×'.join(map(str, volume.shape[::-1]))} voxels)")


@app.command()
def phantom(
    out: Path = typer.Option(..., "--out", help="Output dataset folder (imagesTr/, labelsTr/, dicom/, lesions/, dataset.json)."),
    n: int = typer.Option(3, "--n", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical cases."),
    small: bool = typer.Option(False, "--small", help="256×256 cases at ~1.3 mm for fast tests."),
    pet: bool = typer.Option(False, "--pet", help="Add a co-registered PET-like second channel."),
    append: bool = typer.Option(False, "--append", help="Add the cases after those already in OUT (e.g. mix small and full-size)."),
    large_masses: float = typer.Option(0.0, "--large-masses", min=0.0, max=1.0,
                                       help="Beyond the spec, for training data: the probability that a case gets one extra 35-70 mm mass."),
    small_nodules: int = typer.Option(0, "--small-nodules", min=0, max=10,
                                      help="Beyond the spec, for training data: extra 3-6 mm nodules per case, mostly juxtavascular, solid or ground glass."),
) -> None:
    """Generate synthetic chest CTs with lung nodules and exact ground truth (see docs/phantom.md)."""
    import time

    from meddet.phantom import generate_dataset

    start = time.perf_counter()
    generate_dataset(out, n=n, seed=seed, small=small, pet=pet, append=append, large_mass_probability=large_masses,
                     small_nodules=small_nodules)
    console.print(f"Wrote {n} phantom case(s) to {out} in {time.perf_counter() - start:.1f} s")


@app.command()
def plan(
    dataset: Path = typer.Argument(..., help="Dataset folder (dataset.json, imagesTr/, labelsTr/) or a CSV of image,label pairs."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write plan.json (default: DATASET/plan.json)."),
    gpu_memory: Optional[float] = typer.Option(None, "--gpu-memory", help="Plan for a GPU with this many GiB instead of this CPU."),
    step_seconds: float = typer.Option(2.0, "--step-seconds", help="CPU budget: seconds per training step."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the model (see `meddet models`)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="Override the loss: dice, focal, dice_ce, dice_focal, dice_ce_blob (adds a per-lesion Dice term), dice_ce_lesion_ce (adds a per-lesion cross-entropy)."),
    patch_size: Optional[str] = typer.Option(None, "--patch-size", help="Override the patch size, e.g. 32,96,96 (z,y,x)."),
    target_spacing: Optional[str] = typer.Option(None, "--target-spacing", help="Override the spacing, e.g. 1.3,1.3,2.5 (x,y,z mm)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Override the number of training iterations."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the batch size."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Override the compute precision: bf16 or fp32."),
    patch_centre: Optional[str] = typer.Option(
        None, "--patch-centre", help="Where forced training patches centre: voxel (any lesion voxel, nnU-Net) or lesion (each lesion equally often)."),
    texture_noise: Optional[float] = typer.Option(
        None, "--texture-noise", min=0.0, max=1.0, help="Share of training patches given correlated CT noise (5-40 HU, 0.5-2 mm grain)."),
) -> None:
    """Fingerprint a dataset and derive a training plan (nnU-Net style), each decision with its reason."""
    from meddet.planning.dataset import load_dataset
    from meddet.planning.fingerprint import compute_fingerprint
    from meddet.planning.planner import default_budget, make_plan, save_plan
    from meddet.precision import parse_precision
    from meddet.training.augment import check_patch_centre

    parse_precision(precision)  # before the fingerprint: bad input fails at once
    if patch_centre is not None:  # before the fingerprint: bad input fails at once, as a usage error
        try:
            check_patch_centre(patch_centre)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--patch-centre") from None

    def triple(text: Optional[str], cast):
        return None if text is None else [cast(v) for v in text.split(",")]

    index = load_dataset(dataset)
    fingerprint = compute_fingerprint(index)
    root = index.root
    fingerprint.save(root / "fingerprint.json")
    overrides = {
        "model": model, "loss": loss, "patch_size": triple(patch_size, int), "target_spacing": triple(target_spacing, float),
        "iterations": iterations, "batch_size": batch_size, "seed": seed, "precision": precision, "patch_centre": patch_centre,
        "texture_noise": texture_noise,
    }
    result = make_plan(fingerprint, default_budget(gpu_memory, step_seconds), overrides, index.labels)
    path = save_plan(result, out or root / "plan.json")
    console.print(f"{len(index.cases)} labelled case(s), {len(index.unlabelled)} unlabelled; plan written to {path}")
    for key, reason in result["decisions"].items():
        console.print(f"  [bold]{key}[/]: {escape(reason)}")
    console.print(f"  patch {result['patch_size']} batch {result['batch_size']} spacing {result['target_spacing']} "
                  f"model {result['model']['name']} loss {result['loss']['name']}")


@app.command()
def train(
    plan_path: Path = typer.Argument(..., metavar="PLAN", help="plan.json from `meddet plan`."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Output folder: checkpoints, log.jsonl, training_curve.png."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Override the plan's iterations."),
    validate_every: Optional[int] = typer.Option(None, "--validate-every", help="Validate (and checkpoint) every N iterations."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore an existing checkpoint in --out instead of resuming from it."),
    workers: int = typer.Option(1, "--workers", help="Data-loading worker processes."),
) -> None:
    """Train the plan's model (resumes from OUT/checkpoint_last.pt; run under torchrun for several processes)."""
    from meddet.training.trainer import train as run_training

    summary = run_training(plan_path, out, iterations=iterations, validate_every=validate_every, resume=not fresh, num_workers=workers)
    if summary["rank"] == 0:
        console.print(f"Done: {summary['iterations']} iterations, best validation Dice {summary['best_val_dice']:.3f}; see {out}")


@app.command()
def models(
    patch_size: str = typer.Option("64,128,128", "--patch-size", help="Patch size z,y,x for the GFLOPs column."),
    in_channels: int = typer.Option(1, "--in-channels", help="Input channels."),
    plan_path: Optional[Path] = typer.Option(None, "--plan", help="Take patch size and channels from a plan."),
) -> None:
    """List the registered models with their parameters and GFLOPs at a patch size."""
    from rich.table import Table

    from meddet.networks.registry import describe_models

    patch = tuple(int(v) for v in patch_size.split(","))
    out_channels = 2
    if plan_path is not None:
        from meddet.planning.planner import load_plan

        loaded = load_plan(plan_path)
        patch, in_channels, out_channels = tuple(loaded["patch_size"]), len(loaded["channel_names"]), loaded["num_classes"]
    table = Table(title=f"meddet models at patch {'×'.join(map(str, patch))}, {in_channels} input channel(s)")
    for column in ("name", "parameters", "GFLOPs (forward)", "summary"):
        table.add_column(column)
    for row in describe_models(patch, in_channels, out_channels):
        params = f"{row['parameters'] / 1e6:.2f} M" if row["parameters"] else "—"
        gflops = f"{row['gflops']:.1f}" if row["gflops"] is not None else row["note"]
        table.add_row(row["name"], params, escape(gflops), escape(row["summary"]))
    console.print(table)


@app.command()
def predict(
    source: Path = typer.Argument(..., metavar="INPUT", help="DICOM folder or zip, NIfTI/NRRD/MHA file, or a folder of such cases."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (OUT/<case>/ for a folder of cases)."),
    model: Optional[str] = typer.Option(None, "--model", help="Bundled model name or checkpoint path (default: the bundled lung-nodule model)."),
    tta: Optional[bool] = typer.Option(
        None, "--tta/--no-tta",
        help="Test-time mirroring. Default: the model's own (lung-nodule: the scan and its head-foot mirror, 2 passes). "
        "--tta: all 8 mirrorings (~3.5x the default's time); --no-tta: one pass.",
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for inference (default: all cores)."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID when a DICOM folder holds several."),
    precision: Optional[str] = typer.Option(None, "--precision", help="bf16 or fp32 (default: what the model was trained in, where this CPU has it)."),
) -> None:
    """Detect lesions: writes lesions.json, mask.nii.gz, seg.dcm (DICOM input) and overlay.png."""
    import torch

    from meddet.inference.models import resolve_model
    from meddet.inference.pipeline import predict_path
    from meddet.inference.predictor import load_model
    from meddet.precision import parse_precision

    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(resolve_model(model), parse_precision(precision))
    mirroring = None if tta is None else ("xyz" if tta else "none")
    results = predict_path(loaded, source, out, mirroring, series_uid=series)
    for result in results:
        if "error" in result:
            err_console.print(f"[bold red]{escape(result['case'])}:[/] {escape(result['error'])}")
            continue
        where = Path(result["input"]["path"]).name
        console.print(f"{escape(where)}: {len(result['lesions'])} lesion(s), {result['timing_s']['total']:.1f} s")
    console.print(f"Results in {out}")
    if any("error" in r for r in results):
        raise typer.Exit(EXIT_INPUT_ERROR)


@app.command()
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Output folder of `meddet predict`."),
    truth: Path = typer.Option(..., "--truth", help="Ground truth: lesions/<case>.json and/or label maps (instances/, labelsTr/)."),
    report: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: PRED/evaluation)."),
) -> None:
    """Score predictions: FROC/CPM (LUNA16 rule) with bootstrap CIs, sensitivity by size, Dice, HD95, latency."""
    from meddet.evaluation.evaluate import evaluate as run_evaluation
    from meddet.evaluation.report import format_table

    out = report or pred / "evaluation"
    metrics = run_evaluation(pred, truth, out)
    console.print(format_table(metrics))
    console.print(f"Report: {out / 'report.html'}  metrics: {out / 'metrics.json'}")


@app.command("export-model")
def export_model(
    checkpoint: Path = typer.Argument(..., help="checkpoint_best.pt of a `meddet train` run."),
    out: Path = typer.Option(..., "--out", help="Model file to write (e.g. src/meddet/models/lung-nodule.pt)."),
    name: str = typer.Option("lung-nodule", "--name", help="Model name recorded in every lesions.json."),
    version: Optional[str] = typer.Option(None, "--version", help="Model version (default: today's date)."),
    max_cases: Optional[int] = typer.Option(None, "--max-cases", help="Calibrate on at most this many validation cases."),
    mirroring: str = typer.Option(
        "none", "--mirroring",
        help="Test-time mirroring stored in the model and used to calibrate it: none, or the mirrored array axes "
        "(z: the scan and its head-foot mirror, 2 passes; xyz: all 8).",
    ),
) -> None:
    """Calibrate threshold and minimum lesion size on the run's validation cases and write a deployable model."""
    from meddet.inference.export import export_model as run_export
    from meddet.inference.predictor import check_mirroring

    try:
        check_mirroring(mirroring)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mirroring") from exc
    exported = run_export(checkpoint, out, name, version, max_cases, mirroring)
    best = exported["provenance"]["calibration"]["best"]
    console.print(f"Wrote {out}: mirroring {mirroring}, threshold {best['threshold']}, min volume {best['min_volume_mm3']} mm³, "
                  f"validation CPM {best['cpm']:.3f}, sensitivity at 1 FP/scan {best['sensitivity_at_1fp']:.3f}")


@app.command("train-rescorer")
def train_rescorer(
    model: Path = typer.Argument(..., help="First-stage model file from `meddet export-model`."),
    out: Path = typer.Option(..., "--out", help="Model file to write: the first stage plus the classifier."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Dataset (default: the one the model's plan names)."),
    candidates: Optional[Path] = typer.Option(None, "--candidates", help="Candidate cache (default: DATASET/candidates/NAME-VERSION)."),
    iterations: int = typer.Option(3000, "--iterations", min=1, help="Classifier training steps (batch 32)."),
    version: Optional[str] = typer.Option(None, "--version", help="Version of the written model (default: VERSION+rescorer)."),
    texture_noise: float = typer.Option(0.0, "--texture-noise", min=0.0, max=1.0,
                                        help="Share of training cubes given correlated noise (1-2 mm blotches)."),
) -> None:
    """Train a second-stage classifier on the model's candidates and calibrate the two-stage model on validation cases."""
    from meddet.training.rescorer import train_rescorer as run

    state = run(model, out, dataset, candidates, iterations, version, log=console.print,
                texture_probability=texture_noise)
    best = state["provenance"]["rescorer"]["calibration"]["best"]
    console.print(f"Wrote {out}: candidates at {best['candidate_threshold']}, score {best['combination']}, threshold "
                  f"{best['threshold']}, validation CPM {best['cpm']:.3f}, sensitivity at 1 FP/scan {best['sensitivity_at_1fp']:.3f}")


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_time=False, show_path=False)],
    )
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # its messages may quote header values, names included


def main() -> None:
    """Console-script entry point: runs the app and turns input errors into a message and exit code 2."""
    keep_freed_memory()  # before any large allocation: steadier, faster 3D conv steps (see meddet.runtime)
    _configure_logging()
    try:
        app()
    except MeddetInputError as exc:
        err_console.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(EXIT_INPUT_ERROR)
    except OSError as exc:
        if exc.filename is None:
            raise
        problem = MeddetInputError(
            f"Could not create, write or read this path: {exc.strerror or exc}.", exc.filename,
            "Check the path: a file where a folder should be (or the reverse), no permission, or a full disk.",
        )
        err_console.print(f"[bold red]Error:[/] {escape(str(problem))}", highlight=False)
        sys.exit(EXIT_INPUT_ERROR)
