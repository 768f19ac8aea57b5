"""Dataset YAMLs (YOLOv5 keys ``path, train, val, test, nc, names, download``) -> one checked dict.

Path rules: a relative ``path`` is resolved against the repository root (YOLOv5's convention; our
datasets live in ``<repo>/datasets/``, which git ignores); without ``path``, the YAML's own folder is
the root. ``train``/``val``/``test`` are a folder, a ``.txt`` list of images or a list of those, relative
to the root. A ``generate`` mapping makes the synthetic set on first use. Nothing is ever downloaded:
missing data raises FileNotFoundError saying which paths are missing and how to get the files.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional, Union

from utils.data.synthetic import generate_dataset
from utils.files import REPO_ROOT, load_yaml_file, resolve_path

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
GENERATE_KEYS = {"images", "val_images", "size", "seed"}
# train.py options a dataset YAML may recommend under ``recommended:``; used only where the command gives none.
RECOMMENDABLE = {"hyp": str, "nbs": int}
REQUIRED_GENERATE_KEYS = {"images", "val_images"}

# Most classes a data YAML may declare (LVIS has 1203): a typo such as nc: 1000000000 is refused, not allocated.
MAX_CLASSES = 10_000

# The one class of --single-cls runs, named as YOLOv5 names it.
SINGLE_CLASS_NAME = "item"


def find_data_file(path: Union[str, Path]) -> Path:
    """A data YAML as given, else under the repository or its ``data/`` (``--data VisDrone.yaml`` works anywhere)."""
    return resolve_path(path, "--data", "data").resolve()


def _read_names(config: dict, origin: str) -> list[str]:
    """``names`` as a list, from a list or an ``{id: name}`` dict with ids 0..n-1; checked against ``nc``."""
    names = config.get("names")
    nc = _read_nc(config, origin)
    if names is None:
        if nc is None:
            raise ValueError(f"{origin}: needs 'names' or 'nc'")
        names = [f"class{i}" for i in range(nc)]
    if isinstance(names, dict):
        if set(names) != set(range(len(names))):
            raise ValueError(f"{origin}: 'names' ids must be 0..{len(names) - 1}, got {list(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{origin}: 'names' must be a non-empty list or {{id: name}} mapping, got {names!r}")
    if nc is not None and nc != len(names):
        raise ValueError(f"{origin}: nc={nc} but {len(names)} names are given")
    nested = [name for name in names if isinstance(name, (list, dict))]
    if nested:
        raise ValueError(f"{origin}: each of 'names' must be one name (text), got a {type(nested[0]).__name__}")
    return [str(name) for name in names]


def _read_nc(config: dict, origin: str) -> Optional[int]:
    """``nc`` as a positive whole number (``2.0`` is 2; ``2.5``, ``three`` and ``true`` are refused), or None."""
    nc = config.get("nc")
    if nc is None:
        return None
    if (isinstance(nc, bool) or not isinstance(nc, (int, float)) or not math.isfinite(nc) or nc != int(nc)
            or not 1 <= nc <= MAX_CLASSES):
        raise ValueError(f"{origin}: nc must be a whole number of classes from 1 to {MAX_CLASSES}, got {nc!r}")
    return int(nc)


def _resolve_root(config: dict, yaml_path: Path) -> Path:
    root = config.get("path")
    if root is None:
        return yaml_path.parent
    root = Path(root)
    return root if root.is_absolute() else (REPO_ROOT / root).resolve()


def _resolve_split(value: Any, root: Path) -> Union[None, str, list[str]]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(root / v) for v in value]
    return str(root / value)


def _missing_paths(value: Union[None, str, list[str]]) -> list[str]:
    paths = [] if value is None else [value] if isinstance(value, str) else value
    return [p for p in paths if not Path(p).exists()]


def load_data_config(path: Union[str, Path], splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """Read, validate and resolve a dataset YAML; generate the synthetic set if the YAML says so.

    Args:
        splits: the splits that must exist on disk (e.g. ``("test",)`` for ``val.py --task test``).
    Returns:
        dict with absolute ``path``, ``train``, ``val``, ``test`` (str, list of str or None), ``nc``, ``names``
        (list), ``yaml_file`` and the other keys of the file.
    Raises:
        FileNotFoundError: the YAML or a required split is missing (with the file's ``download`` help).
        ValueError: malformed YAML content (names/nc mismatch, unknown split name, bad ``generate``).
    """
    yaml_path = find_data_file(path)
    config = load_yaml_file(yaml_path)
    if not isinstance(config, dict):
        raise ValueError(f"{yaml_path}: expected a mapping with train/val/names, got {type(config).__name__}")
    unknown_splits = sorted(set(splits) - set(SPLITS))
    if unknown_splits:
        raise ValueError(f"unknown split(s) {unknown_splits}; expected some of {SPLITS}")
    names = _read_names(config, str(yaml_path))
    root = _resolve_root(config, yaml_path)
    resolved = dict(config, path=str(root), names=names, nc=len(names), yaml_file=str(yaml_path))
    for split in SPLITS:
        resolved[split] = _resolve_split(config.get(split), root)
    if config.get("generate"):
        _generate(config["generate"], root, yaml_path)
    _check_present(resolved, splits, yaml_path)
    return resolved


def _generate(settings: Any, root: Path, yaml_path: Path) -> None:
    if not isinstance(settings, dict) or set(settings) - GENERATE_KEYS:
        raise ValueError(f"{yaml_path}: 'generate' must be a mapping with keys among {sorted(GENERATE_KEYS)}, "
                         f"got {settings!r}")
    missing = sorted(REQUIRED_GENERATE_KEYS - set(settings))
    if missing:
        raise ValueError(f"{yaml_path}: 'generate' needs {' and '.join(missing)} (numbers of images), got {settings!r}")
    try:
        generate_dataset(root, **settings)
    except ValueError as error:
        raise ValueError(f"{yaml_path}: {error}") from None


def _check_present(config: dict, splits: tuple[str, ...], yaml_path: Path) -> None:
    missing: list[str] = []
    for split in splits:
        if config.get(split) is None:
            raise ValueError(f"{yaml_path}: split '{split}' is required but not defined")
        missing += _missing_paths(config[split])
    if missing:
        help_text: Optional[str] = config.get("download")
        how = f"To get the data: {str(help_text).strip()}" if help_text else "Put the images and labels there."
        raise FileNotFoundError(f"{yaml_path}: dataset not found, missing {missing}. This project never downloads "
                                f"data by itself. {how}")


def recommended_training(path: Union[str, Path]) -> dict[str, Any]:
    """The ``recommended:`` training options of a dataset YAML (e.g. the embedded demo's fast CPU recipe), {}
    when it has none. Only the YAML is read: no data is generated or checked."""
    yaml_path = find_data_file(path)
    config = load_yaml_file(yaml_path)
    recommended = config.get("recommended") if isinstance(config, dict) else None
    if recommended is None:
        return {}
    if not isinstance(recommended, dict) or set(recommended) - set(RECOMMENDABLE) or not all(
            isinstance(value, RECOMMENDABLE[key]) for key, value in recommended.items()):
        raise ValueError(f"{yaml_path}: 'recommended' must map some of {sorted(RECOMMENDABLE)} to "
                         f"{[kind.__name__ for kind in RECOMMENDABLE.values()]}, got {recommended!r}")
    return dict(recommended)
