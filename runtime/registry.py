"""Finding a bundle by the model id written in an .aec file.

Searched in order: the folders in $AECTL_BUNDLES (os.pathsep-separated), the user's bundle folder
($XDG_DATA_HOME/aectl/bundles, default ~/.local/share/aectl/bundles) and the bundles shipped inside the
package (aectl/models/). Each folder holds bundle directories (one level down), or is itself a bundle.
Hidden folders are not searched: `.NAME.xxxx` is where export and strip build a bundle before renaming it, and
a killed run leaves one behind. A folder that cannot be read is passed over, as a broken manifest is.
"""
from __future__ import annotations

import os
from pathlib import Path

from aectl.runtime.bundle import MANIFEST, Bundle, load_bundle, read_json
from aectl.runtime.errors import AectlError, on_command_line, option

SHIPPED = Path(__file__).resolve().parent.parent / "models"


class NoBundle(AectlError):
    """No bundle in the search path holds the model (as against one that does, but fails to load)."""


def user_bundle_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aectl" / "bundles"


def search_paths() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("AECTL_BUNDLES", "").split(os.pathsep) if p]
    try:
        user = [user_bundle_dir()]
    except RuntimeError:  # no home folder (HOME unset, a uid without a passwd entry): an internal error before
        user = []
    return extra + user + [SHIPPED]


def bundles_in(root: Path) -> list[Path]:
    """The bundle a search folder is, or the bundles one level down in it (not hidden ones)."""
    if _has_manifest(root):
        return [root]
    try:
        entries = sorted(root.iterdir()) if root.is_dir() else []
    except OSError:  # unreadable: said "<the .aec file>: Permission denied" and ended the search
        return []
    return [p for p in entries if not p.name.startswith(".") and _has_manifest(p)]


def _has_manifest(folder: Path) -> bool:
    try:
        return (folder / MANIFEST).is_file()
    except OSError:
        return False


def _manifest(folder: Path):
    try:
        return read_json(folder / MANIFEST)
    except AectlError:
        return None


def find_bundle(model_id: str) -> Bundle:
    """The first search folder holding the model decides. Inside it the least lossy decoder wins (fp32, then
    fp16, then int8: the variants share the model id, since the bitstream is the same), so folder names never
    pick a lossier decoder; a variant decodes when no better one is in its folder, or when passed with -m.
    A match that does not load, or whose decoder file is missing or fails its hash (a copy cut short), gives way
    to the next one, in its folder or a later one; when none loads, the first one's error is raised."""
    errors = []
    for root in search_paths():
        matches = []
        for path in bundles_in(root):
            manifest = _manifest(path)
            if isinstance(manifest, dict) and manifest.get("model_id") == model_id:
                matches.append((_loss_rank(_decoder_precision(manifest)), path))
        for _, path in sorted(matches):
            try:
                bundle = load_bundle(path)
                bundle.file(bundle.decoder_role)
                return bundle
            except AectlError as exc:
                errors.append(exc)
    if errors:
        raise errors[0]
    searched = ", ".join(str(p) for p in search_paths())
    raise NoBundle(f"no bundle with model id {model_id} found (searched {searched}); "
                     f"{'pass it with -m BUNDLE' if on_command_line() else 'give its bundle folder'}")


LOSS_ORDER = ("fp32", "fp16", "int8")  # decoder precisions, least lossy first (int8 lost 0.11 dB on q4, fp16 0.00)


def _loss_rank(precision: str) -> int:
    return LOSS_ORDER.index(precision) if precision in LOSS_ORDER else len(LOSS_ORDER)


def _decoder_precision(manifest: dict) -> str:
    files = manifest.get("files")
    decoder = files.get("decoder") if isinstance(files, dict) else None
    return decoder.get("precision", "fp32") if isinstance(decoder, dict) else "fp32"


def shipped_bundles() -> list[Path]:
    """Bundles that ship inside the package, in name order."""
    return bundles_in(SHIPPED)


DEFAULT_QUALITY = 4  # what `aectl compress` uses without -m or -q


def manifest_quality(manifest) -> int | None:
    """A manifest's `architecture.quality`; None where it is missing or malformed (the section is descriptive)."""
    architecture = manifest.get("architecture") if isinstance(manifest, dict) else None
    quality = architecture.get("quality") if isinstance(architecture, dict) else None
    return quality if type(quality) is int else None


def shipped_qualities() -> dict[int, Path]:
    """Shipped bundles by their quality level (the `architecture.quality` in each manifest)."""
    found = {}
    for path in shipped_bundles():
        quality = manifest_quality(_manifest(path))
        if quality is not None:
            found[quality] = path
    return dict(sorted(found.items()))


def shipped_bundle(quality: int | None = None) -> Path:
    """The shipped bundle for `quality` (default DEFAULT_QUALITY, or the nearest shipped one to it)."""
    levels = shipped_qualities()
    if not levels:
        asked = f"{option('quality', quality)}: no model ships" if quality is not None else \
            "no model given and none ships"
        raise AectlError(f"{asked} with this install: "
                         f"{'pass a bundle with -m BUNDLE' if on_command_line() else 'give a bundle folder'}")
    if quality is None:
        return levels[min(levels, key=lambda q: (abs(q - DEFAULT_QUALITY), -q))]
    if type(quality) is not int:  # "4" was told that 4 is not shipped
        raise AectlError(f"{option('quality', quality)}: give an int, one of {', '.join(map(str, levels))}")
    if quality not in levels:
        raise AectlError(f"{option('quality', quality)}: no shipped model at that quality; shipped: "
                         f"{', '.join(map(str, levels))}")
    return levels[quality]
