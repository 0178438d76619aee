"""Where model files come from: the bundled models shipped inside the package, or a path.

Why bundled: a new user's first `meddet predict` must work offline, with no download; the weights travel in the
wheel (src/meddet/models/*.pt) with their model cards in docs/models/.
"""

from __future__ import annotations

from pathlib import Path

from meddet.errors import MeddetInputError

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "lung-nodule"


def bundled_models() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.pt"))


def resolve_model(name_or_path: str | None) -> Path:
    """A bundled model's file by name, or the given checkpoint path."""
    name = name_or_path or DEFAULT_MODEL
    candidate = Path(name)
    if candidate.suffix == ".pt" or candidate.exists():
        return candidate
    path = BUNDLED_DIR / f"{name}.pt"
    if not path.is_file():
        raise MeddetInputError(
            f"No bundled model named '{name}'.",
            hint=f"Bundled models: {', '.join(bundled_models()) or 'none'}; or pass a checkpoint path with --model.",
        )
    return path
