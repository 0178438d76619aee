"""The ``meddet`` command-line program.

Why a thin layer: every command only parses options and calls a library function, so what the CLI does can be done
from Python the same way. Bad input (``MeddetInputError``) is printed as a plain message with exit code 2; any other
exception is a bug and keeps its traceback.
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
) -> None:
    """Generate synthetic chest CTs with lung nodules and exact ground truth (see docs/phantom.md)."""
    import time

    from meddet.phantom import generate_dataset

    start = time.perf_counter()
    generate_dataset(out, n=n, seed=seed, small=small, pet=pet)
    console.print(f"Wrote {n} phantom case(s) to {out} in {time.perf_counter() - start:.1f} s")


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_time=False, show_path=False)],
    )


def main() -> None:
    """Console-script entry point: runs the app and turns input errors into a message and exit code 2."""
    _configure_logging()
    try:
        app()
    except MeddetInputError as exc:
        err_console.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(EXIT_INPUT_ERROR)
