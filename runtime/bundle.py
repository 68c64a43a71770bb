"""A model bundle on disk: manifest.json plus encoder.onnx and/or decoder.onnx.

Loading validates the manifest before anything else, keeps every file path inside the bundle directory and
checks each file's sha256 before a session is created, so a tampered or half-copied bundle never runs. A model
file may be a symlink (a Hugging Face snapshot is a folder of symlinks into its blob store): its path in the
manifest is what must stay inside, and its sha256 checks what it points to.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aectl.runtime.errors import AectlError, option
from aectl.runtime.outputs import hidden_sibling, make_folders, remove_empty, write_error
from aectl.runtime.onnx_guard import check_self_contained, is_ort_format
from aectl.runtime.tiling import MAX_TILE

MANIFEST = "manifest.json"
FORMAT = "aectl-bundle"
FORMAT_VERSION = 1
FILE_ROLES = ("encoder", "decoder", "decoder_ort")
PRECISIONS = ("fp32", "fp16", "int8")  # of a file's weights (manifest files.ROLE.precision)
MAX_CLASSES = 64  # classified entropy tables per bundle (export/entropy_classes.py)
MAX_TABLE_ENTRIES = 1 << 24  # table sets x channels x widest table: 128 MB of float64 bit costs at most


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system: an internal error that stopped the bundle search
        return False


def table_entries(cdfs: list, classes: int) -> int:
    """What the entropy coder holds per bundle, held to MAX_TABLE_ENTRIES: a channels x widest-table array of
    bit costs for the plain tables and for each class's."""
    return (1 + classes) * len(cdfs) * max(len(cdf) for cdf in cdfs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def has_encoder(self) -> bool:
        return "encoder" in self.manifest["files"]

    @property
    def decoder_role(self) -> str:
        """'decoder' (ONNX) when present, else 'decoder_ort' (ORT format, for onnxruntime's minimal and mobile
        builds): also where the manifest lists both and only decoder.ort was copied to the client (that said
        "decoder.onnx is missing")."""
        files = self.manifest["files"]
        if "decoder" not in files:
            return "decoder_ort"
        if "decoder_ort" in files and not _is_file(self.path / files["decoder"]["path"]) and \
                _is_file(self.path / files["decoder_ort"]["path"]):
            return "decoder_ort"
        return "decoder"

    @property
    def input_rule(self) -> dict:
        return self.manifest["input"]

    @property
    def latent_rule(self) -> dict:
        return self.manifest["latent"]

    @property
    def entropy(self) -> dict:
        return self.manifest["entropy"]

    def read(self, role: str) -> bytes:
        """The bytes of a model file, hash-checked and (for ONNX) checked to be self-contained. Sessions are
        created from these bytes, so the file cannot change between the check and the load."""
        path = self.file(role, verify=False)
        try:
            self._check_size(role, path)
            data = path.read_bytes()
        except OSError as exc:  # named the .aec or image file being coded, as if it were the unreadable one
            raise self._unreadable(path, exc) from None
        if hashlib.sha256(data).hexdigest() != self.manifest["files"][role]["sha256"]:
            raise AectlError(f"bundle {self.path}: {path.name} does not match its sha256 in the manifest "
                             "(corrupted or modified)")
        if not is_ort_format(data):  # by its bytes, as onnxruntime tells: an ONNX graph named decoder.bin or
            try:                     # decoder.ort was loaded unchecked, its external data read from here
                check_self_contained(data)
            except AectlError as exc:
                raise AectlError(f"bundle {self.path}: {path.name}: {exc}") from None
        return data

    def file(self, role: str, verify: bool = True) -> Path:
        """Path of the 'encoder' or 'decoder' file, its hash checked."""
        entry = self.manifest["files"].get(role)
        if entry is None:
            raise AectlError(f"bundle {self.path} has no {role} (a decoder-only bundle cannot compress)")
        check_file_path(entry["path"], lambda what: AectlError(f"bundle {self.path}: {role} path {what}"))
        path = self.path / entry["path"]
        try:
            if not path.is_file():
                raise AectlError(f"bundle {self.path}: {entry['path']} is missing")
            if verify:
                self._check_size(role, path)
            if verify and sha256_file(path) != entry["sha256"]:
                raise AectlError(f"bundle {self.path}: {entry['path']} does not match its sha256 in the manifest "
                                 "(corrupted or modified)")
        except OSError as exc:
            raise self._unreadable(path, exc) from None
        return path

    def _check_size(self, role: str, path: Path) -> None:
        """A file of another size than the manifest's `bytes` fails its hash anyway: said before reading it (a
        sparse 1 TiB decoder was read whole into memory, or hashed for minutes on every search)."""
        size = self.manifest["files"][role].get("bytes")
        if isinstance(size, int) and path.stat().st_size != size:
            raise AectlError(f"bundle {self.path}: {path.name} does not match its size in the manifest "
                             f"({path.stat().st_size} bytes, not {size}; corrupted or modified)")

    def _unreadable(self, path: Path, exc: OSError) -> AectlError:
        return AectlError(f"bundle {self.path}: cannot read {path.relative_to(self.path)}: {exc.strerror or exc}")


def entropy_digest(tables: dict) -> str:
    """sha256 of a manifest's entropy section as canonical JSON: export stamps it into the ONNX files, so that a
    manifest whose tables are not the ones the graphs were exported with is told apart."""
    return hashlib.sha256(json.dumps(tables, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_stamps(bundle: "Bundle", name: str, props: dict) -> None:
    """A model file's stamps (its metadata, `props`) against the manifest: export stamps the model id and the
    entropy tables' digest. A manifest edited or mixed up (another model's id or tables beside these graphs)
    decoded its files wrong with exit 0. Files exported before 2026-11-25, the shipped ones included, carry the
    model id alone: an edited table of theirs is not caught."""
    if props.get("aectl.model_id", bundle.model_id) != bundle.model_id:
        raise AectlError(f"bundle {bundle.path}: {name} belongs to model {props['aectl.model_id']}, but the "
                         f"manifest says {bundle.model_id} (manifest edited or mixed up)")
    if "aectl.entropy_sha256" in props and props["aectl.entropy_sha256"] != entropy_digest(bundle.entropy):
        raise AectlError(f"bundle {bundle.path}: the manifest's entropy tables are not the ones {name} was "
                         "exported with (manifest edited or mixed up)")


def check_file_path(path: str, error) -> None:
    """A manifest's file path must name a file inside the bundle: relative, no "..", no NUL (open() said only
    "embedded null byte"). `error(what)` makes the exception to raise."""
    if "\0" in path or not path or Path(path).is_absolute() or ".." in Path(path).parts or Path(path).name in ("", "."):
        raise error(f"{path!r} must name a file inside the bundle")


def read_json(path: Path):
    """A manifest's JSON, or one line saying why not: unreadable, not UTF-8, not JSON, or nested past Python's
    recursion limit (json raised RecursionError, which ended in an internal error)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AectlError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise AectlError(f"{path}: not valid JSON ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AectlError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise AectlError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer of thousands of digits: an internal error that stopped the search
        raise AectlError(f"{path}: not valid JSON ({exc})") from None


def load_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        if not path.is_dir():
            raise AectlError(f"{path}: not a bundle directory (expected a folder with {MANIFEST})")
        if not manifest_path.is_file():
            raise AectlError(f"{path}: no {MANIFEST} here; is this a bundle made by `aectl export`?")
    except OSError as exc:  # a folder on the way that cannot be searched
        raise AectlError(f"{path}: cannot read ({exc.strerror or exc})") from None
    manifest = read_json(manifest_path)
    validate_manifest(manifest, manifest_path)
    return Bundle(path, manifest)


def validate_manifest(m: dict, where: Path) -> None:
    """Refuse manifests with missing or impossible values, with a message naming the field."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise AectlError(f"{where}: invalid manifest: {what}")

    need(isinstance(m, dict), "not a JSON object")
    need(m.get("format") == FORMAT, f"format is not {FORMAT!r}")
    need(m.get("format_version") == FORMAT_VERSION,
         f"format_version {m.get('format_version')!r} is not supported (this aectl reads {FORMAT_VERSION})")
    need(isinstance(m.get("model_id"), str) and re.fullmatch("[0-9a-f]{32}", m["model_id"]) is not None,
         "model_id must be 32 lower-case hex characters")
    files = m.get("files")
    need(isinstance(files, dict) and ("decoder" in files or "decoder_ort" in files),
         "files.decoder (or files.decoder_ort) is required")
    for role, entry in files.items():
        need(role in FILE_ROLES, f"unknown file role {role!r}")
        need(isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str),
             f"files.{role} needs path and sha256")
        check_file_path(entry["path"], lambda what: AectlError(f"{where}: invalid manifest: files.{role}.path {what}"))
        need(entry.get("precision", "fp32") in PRECISIONS, f"files.{role}.precision must be fp32, fp16 or int8")
    for section in ("input", "latent", "entropy"):
        need(isinstance(m.get(section), dict), f"{section} must be a JSON object")
    inp = m["input"]
    need(inp.get("channels") == 3, "input.channels must be 3")
    fixed, stride = inp.get("fixed_size"), inp.get("stride")
    need(isinstance(stride, int) and 1 <= stride <= MAX_TILE, f"input.stride must be an integer in 1..{MAX_TILE}")
    need(fixed is None or (isinstance(fixed, int) and 1 <= fixed <= 4096), "input.fixed_size must be null or 1..4096")
    need(fixed is not None or MAX_TILE % stride == 0,  # a fully convolutional model's tiles: MAX_TILE a side
         f"input.stride must divide {MAX_TILE} (the tile side) for a fully convolutional model")
    lat = m["latent"]
    need(isinstance(lat.get("channels"), int) and 1 <= lat["channels"] <= 1 << 16, "latent.channels out of range")
    need(lat.get("layout") in ("NCHW", "NC"), "latent.layout must be NCHW or NC")
    ent = m["entropy"]
    channels = lat["channels"]
    need(isinstance(ent.get("precision"), int) and 8 <= ent["precision"] <= 24, "entropy.precision must be 8..24")
    step = ent.get("step")
    need(isinstance(step, (int, float)) and step > 0 and step < 1e6, "entropy.step must be positive")
    for key in ("offsets", "medians", "cdfs"):
        need(isinstance(ent.get(key), list) and len(ent[key]) == channels, f"entropy.{key} needs one entry per channel")
    need(isinstance(ent.get("tail_mass"), (int, float)) and 0 <= ent["tail_mass"] < 0.5, "entropy.tail_mass")
    need(all(isinstance(v, int) and abs(v) < 1 << 30 for v in ent["offsets"]), "entropy.offsets must lie within +-2**30")
    # the bound before isfinite: a huge integer overflowed it (an internal error)
    need(all(isinstance(v, (int, float)) and abs(v) < 1e6 and math.isfinite(v) for v in ent["medians"]),
         "entropy.medians must be finite numbers")
    need(math.isfinite(step), "entropy.step must be finite")
    total = 1 << ent["precision"]
    for c, cdf in enumerate(ent["cdfs"]):
        need(isinstance(cdf, list) and 3 <= len(cdf) <= (1 << 16) and cdf[0] == 0 and cdf[-1] == total,
             f"entropy.cdfs[{c}] must start at 0 and end at 2**precision")
        need(all(isinstance(v, int) for v in cdf) and all(b > a for a, b in zip(cdf, cdf[1:])),
             f"entropy.cdfs[{c}] must be strictly increasing integers")
    classes = ent.get("classes")
    # The coder holds a channels x widest-table array of bit costs per table set (float64): a 1.7 MB manifest
    # of 65535 channels asked numpy for 34 GB. The shipped q7 needs 9 x 128 x 140.
    count = classes.get("count") if isinstance(classes, dict) else None
    need(table_entries(ent["cdfs"], count if isinstance(count, int) and count > 0 else 0) <= MAX_TABLE_ENTRIES,
         f"entropy tables too large (at most {MAX_TABLE_ENTRIES} entries: table sets x channels x widest table)")
    if classes is not None:
        _check_classes(classes, ent["cdfs"], total, lat["layout"], need)


def _check_classes(classes, cdfs: list, total: int, layout: str, need) -> None:
    """entropy.classes: `count` tables per channel over the learned tables' supports, and count + 1 class-map
    tables (one per context) over `count` classes."""
    need(isinstance(classes, dict) and layout == "NCHW", "entropy.classes needs an NCHW latent")
    count = classes.get("count")
    need(isinstance(count, int) and 2 <= count <= MAX_CLASSES, f"entropy.classes.count must be 2..{MAX_CLASSES}")
    tables = classes.get("cdfs")
    need(isinstance(tables, list) and len(tables) == count and
         all(isinstance(t, list) and len(t) == len(cdfs) for t in tables),
         "entropy.classes.cdfs needs count lists of one table per channel")
    maps = classes.get("map_cdfs")
    need(isinstance(maps, list) and len(maps) == count + 1, "entropy.classes.map_cdfs needs count + 1 tables")
    for name, table, length in ([(f"cdfs[{k}][{c}]", t, len(cdfs[c])) for k, ts in enumerate(tables)
                                 for c, t in enumerate(ts)] + [(f"map_cdfs[{j}]", t, count + 2) for j, t in enumerate(maps)]):
        need(isinstance(table, list) and len(table) == length and table[0] == 0 and table[-1] == total and
             all(isinstance(v, int) for v in table) and all(b > a for a, b in zip(table, table[1:])),
             f"entropy.classes.{name} must be {length} strictly increasing integers from 0 to 2**precision")


def strip_bundle(source: str | Path, out: str | Path, force: bool = False, ort_only: bool = False) -> Bundle:
    """A decoder-only copy of a bundle: decoder file(s) and the manifest (entropy tables included), no encoder;
    with `ort_only`, decoder.ort alone (onnxruntime's minimal and mobile builds read only the ORT format)."""
    bundle = load_bundle(source)
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["files"].pop("encoder", None)
    if ort_only:
        if "decoder_ort" not in manifest["files"]:
            raise AectlError(f"bundle {bundle.path} has no decoder.ort: export it with --ort first")
        manifest["files"].pop("decoder", None)
    manifest["decoder_only"] = True
    with bundle_folder(out, force, source=bundle.path) as tmp:
        for role, entry in manifest["files"].items():
            data = bundle.read(role)  # hash-checked; a file that cannot be read is named as the bundle's
            (tmp / entry["path"]).parent.mkdir(parents=True, exist_ok=True)  # a path may name a subfolder
            (tmp / entry["path"]).write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return load_bundle(out)


@contextmanager
def bundle_folder(out: str | Path, force: bool, source: str | Path):
    """Yields a temporary folder beside `out` to fill; on success it is renamed to `out`, replacing what was
    there (with force), so a failure never leaves a half-written bundle. --force replaces only a bundle (or an
    empty folder): never the folder holding `source` or the working directory, never a folder of other files.
    The old bundle is renamed aside before the new one takes its name, and deleted after: a failure or an
    interrupt at any point leaves the old bundle or the new one at `out`, never neither (deleting it first lost
    it to an interrupt between the two steps). A symlink at `out` is replaced by the bundle, as `mv` would do;
    what it pointed to is left alone."""
    out = Path(out)
    check_output_folder(out, force, Path(source))
    tmp = old = None
    made: list[Path] = []
    try:
        make_folders(out.parent, made)
        while True:  # named before it is made (tempfile.mkdtemp names it after: an interrupt between leaked it)
            tmp = hidden_sibling(out)
            try:
                tmp.mkdir()  # 0777 less the umask, as mkdir makes folders (it was made 0755 whatever the umask)
                break
            except FileExistsError:  # another writer's folder: not ours to remove
                tmp = None
        yield tmp
        # Checked again: the export took seconds, and a folder made at `out` meanwhile (another export, the user's
        # notes) was renamed aside and deleted, --force or not.
        check_output_folder(out, force, Path(source))
        if _present(out):
            old = hidden_sibling(out, ".old")  # a name only: the rename makes it
            out.rename(old)
        tmp.rename(out)
    except OSError as exc:
        raise write_error(out, exc) from None
    finally:
        if old is not None and _present(old) and not _present(out):
            old.rename(out)  # failed or interrupted between the two renames: the old bundle keeps its name
        for leftover in (tmp, old):
            if leftover is not None and leftover.is_symlink():
                leftover.unlink()
            elif leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        remove_empty(made)  # a failed export into new/a/b left new/ and new/a/ (a finished one holds `out`)


def _present(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def check_output_folder(out: Path, force: bool, source: Path) -> None:
    """Refuse, before any work, an output that exists (without force) or that --force must not replace."""
    if not out.exists():
        if out.is_symlink() and not force:  # a dangling one was replaced without --force
            raise AectlError(f"{out} already exists (a symlink to nothing); pass {option('force', True)} to "
                             "replace it")
        return
    if not out.is_dir():  # said "pass --force", which then refused it as a file
        raise AectlError(f"{out} is a file, not a bundle folder; remove it or choose another output")
    target, src = out.resolve(), source.resolve()  # what --force would still refuse is said first
    # (a folder of other files was told to "pass --force", which then refused it)
    if target == src or target in src.parents:
        raise AectlError(f"{out} holds the input {source}; write the bundle somewhere else")
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise AectlError(f"{out} holds the working directory; write the bundle somewhere else")
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise AectlError(f"{out} is not a bundle (no {MANIFEST}) and not empty; {option('force')} replaces only "
                         "a bundle")
    others = _other_files(out)
    if others:  # notes, .aec files, a nested bundle: --force deleted them with the bundle
        raise AectlError(f"{out} holds {others[0]}{f' and {len(others) - 1} more' if len(others) > 1 else ''} "
                         f"besides the bundle; {option('force')} replaces only a bundle's own files: move them first")
    if not force:
        raise AectlError(f"{out} already exists; pass {option('force', True)} to replace it")


def _other_files(folder: Path) -> list[str]:
    """What --force would delete besides the manifest and the files it lists, at any depth: a listed
    `sub/decoder.onnx` made all of `sub/` the bundle's, and the user's notes kept in it were deleted."""
    try:
        files = read_json(folder / MANIFEST).get("files", {})
        listed = {Path(entry["path"]) for entry in files.values() if isinstance(entry, dict) and
                  isinstance(entry.get("path"), str)}
    except (AectlError, AttributeError, TypeError):
        listed = set()
    keep = {Path(MANIFEST)} | listed
    parents = {parent for path in listed for parent in path.parents}
    others: list[Path] = []
    for path in sorted(folder.rglob("*")):  # symlinked folders are not followed: one is named, not walked
        rel = path.relative_to(folder)
        if any(other in rel.parents for other in others):
            continue  # inside a folder already named
        if rel in keep and (path.is_file() or path.is_symlink()):
            continue
        if rel in parents and path.is_dir():  # a symlinked one too: replacing the bundle removes the link only
            continue
        others.append(rel)
    return [str(p) for p in others]
