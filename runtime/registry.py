"""Finding a bundle by the model id written in an .aec file.

Searched in order: the folders in $AECTL_BUNDLES (os.pathsep-separated), the user's bundle folder
($XDG_DATA_HOME/aectl/bundles, default ~/.local/share/aectl/bundles) and the bundles shipped inside the
package (aectl/models/). Each folder holds bundle directories (one level down), or is itself a bundle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from aectl.runtime.bundle import MANIFEST, Bundle, load_bundle
from aectl.runtime.errors import AectlError

SHIPPED = Path(__file__).resolve().parent.parent / "models"


def user_bundle_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aectl" / "bundles"


def search_paths() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("AECTL_BUNDLES", "").split(os.pathsep) if p]
    return extra + [user_bundle_dir(), SHIPPED]


def candidate_bundles() -> list[Path]:
    found = []
    for root in search_paths():
        if (root / MANIFEST).is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()))
    return found


def find_bundle(model_id: str) -> Bundle:
    for path in candidate_bundles():
        try:
            if json.loads((path / MANIFEST).read_text()).get("model_id") == model_id:
                return load_bundle(path)
        except (OSError, ValueError):
            continue
    searched = ", ".join(str(p) for p in search_paths())
    raise AectlError(f"no bundle with model id {model_id} found (searched {searched}); pass it with -m BUNDLE")


def shipped_bundles() -> list[Path]:
    """Bundles that ship inside the package, in name order."""
    return sorted(p for p in SHIPPED.iterdir() if (p / MANIFEST).is_file()) if SHIPPED.is_dir() else []
