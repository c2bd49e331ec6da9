"""Files that ship with stylebox: the style paintings, trained models and the default config."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SOURCE_ROOT = _PACKAGE.parent.parent  # src/stylebox -> repository root, in a source checkout
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def styles_dir() -> Path:
    """Where bundled styles live: inside an installed wheel, or ``styles/`` in a checkout."""
    installed = _PACKAGE / "_bundled_styles"
    return installed if installed.is_dir() else _SOURCE_ROOT / "styles"


def default_config_path() -> Path:
    installed = _PACKAGE / "_default_config" / "stylebox.toml"
    return installed if installed.is_file() else _SOURCE_ROOT / "config" / "stylebox.toml"


def find_style(name: str) -> Path | None:
    """A bundled file whose stem is ``name`` (``starry_night`` -> ``starry_night.jpg``)."""
    folder = styles_dir()
    if not folder.is_dir() or "/" in name or name.startswith("."):
        return None
    matches = sorted(
        p for p in folder.iterdir() if p.stem == name and p.suffix.lower() in _IMAGE_SUFFIXES
    )
    return matches[0] if matches else None


def find_model(name: str) -> Path | None:
    """A bundled ONNX model called ``name`` (``starry_night_small`` -> its ``.onnx``)."""
    if "/" in name or name.startswith("."):
        return None
    path = styles_dir() / f"{name}.onnx"
    return path if path.is_file() else None


def model_names() -> list[str]:
    folder = styles_dir()
    if not folder.is_dir():
        return []
    # fp16 variants are reached through the fast plugin's precision, not by name
    return sorted(p.stem for p in folder.glob("*.onnx") if not p.stem.endswith(".fp16"))


def style_names() -> list[str]:
    folder = styles_dir()
    if not folder.is_dir():
        return []
    # "name.thumb.jpg" and the like belong to a model, not to the list of paintings.
    paintings = (p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    return sorted({p.stem for p in paintings if "." not in p.stem})
