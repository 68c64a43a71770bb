"""The bundles shipped in the package: they load, pass their hash checks and still reach the quality recorded
in their manifest on a kodak-dev image; `aectl models`, `-q`, `--max-bytes`/`--max-bpp` and `aectl eval` on them."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aectl.runtime import Codec
from aectl.runtime.metrics import bpp, psnr
from aectl.runtime.registry import DEFAULT_QUALITY, shipped_bundle, shipped_bundles, shipped_qualities
from conftest import aectl_exe
from test_cli import aectl

SHIPPED = shipped_bundles()
LEVELS = shipped_qualities()


def test_four_or_more_qualities_ship_with_a_documented_default():
    assert len(LEVELS) >= 4, f"shipped qualities: {sorted(LEVELS)}"
    assert shipped_bundle(None) == LEVELS[DEFAULT_QUALITY]
    for path in LEVELS.values():
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["training"]["recipe"][0].startswith("aectl train"), "recipe not recorded"


@pytest.mark.parametrize("bundle", SHIPPED, ids=[b.name for b in SHIPPED])
def test_shipped_bundle_round_trips_at_recorded_quality(bundle, kodak):
    codec = Codec(bundle, provider="cpu")
    for role in codec.bundle.manifest["files"]:
        codec.bundle.read(role)  # sha256 and self-containedness
    recorded = codec.bundle.manifest["evaluation"]["per_image"]["kodim01.png"]
    image = np.asarray(Image.open(kodak / "kodim01.png").convert("RGB"))
    data = codec.compress(image)
    decoded = np.asarray(codec.decompress(data))
    assert abs(psnr(image, decoded) - recorded["psnr"]) <= 0.5
    assert bpp(len(data), image.shape[1], image.shape[0]) == pytest.approx(recorded["bpp"], rel=0.01)


def test_models_lists_every_shipped_bundle():
    listed = json.loads(aectl("models", "--json").stdout)
    assert [m["quality"] for m in listed["models"]] == sorted(LEVELS)
    assert {m["path"] for m in listed["models"]} == {str(p) for p in LEVELS.values()}
    rates = [m["bpp"] for m in listed["models"]]
    assert rates == sorted(rates) and all(r > 0 for r in rates)
    assert "default" in aectl("models").stdout


def test_models_table_keeps_its_figures_whole_on_a_narrow_console():
    """At 40 columns rich cut the cells to fit: `0.…` for a bpp, `fac…` for a name."""
    listed = json.loads(aectl("models", "--json").stdout)
    shown = subprocess.run([aectl_exe(), "models"], capture_output=True, text=True, check=True,
                           env={**os.environ, "COLUMNS": "40"}).stdout
    assert "…" not in shown
    for m in listed["models"]:
        assert f"factorized-q{m['quality']}" in shown and f"{m['bpp']:.3f}" in shown


def test_quality_option_picks_the_shipped_level(kodak, tmp_path):
    low, high = min(LEVELS), max(LEVELS)
    for q in (low, high):
        aectl("compress", kodak / "kodim03.png", "-q", q, "-o", tmp_path / f"q{q}.aec")
    info = {q: json.loads(aectl("info", tmp_path / f"q{q}.aec", "--json").stdout) for q in (low, high)}
    assert info[low]["model_id"] == json.loads((LEVELS[low] / "manifest.json").read_text())["model_id"]
    assert (tmp_path / f"q{low}.aec").stat().st_size < (tmp_path / f"q{high}.aec").stat().st_size
    bad = aectl("compress", kodak / "kodim03.png", "-q", 99, "-o", tmp_path / "x.aec", check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "shipped" in bad.stderr


def test_max_bytes_picks_the_best_quality_that_fits(kodak, tmp_path):
    source = kodak / "kodim03.png"
    sizes = {q: len(Codec(path, provider="cpu").compress(source)) for q, path in LEVELS.items()}
    qualities = sorted(sizes)
    target = qualities[len(qualities) // 2]
    budget = (sizes[target] + sizes[qualities[qualities.index(target) + 1]]) // 2  # between two levels
    proc = aectl("compress", source, "--max-bytes", budget, "-o", tmp_path / "fit.aec", "--json")
    chosen = json.loads(proc.stdout)["files"][0]
    assert chosen["quality"] == target and chosen["bytes"] == sizes[target] <= budget
    assert (tmp_path / "fit.aec").stat().st_size == sizes[target]
    width, height = Image.open(source).size
    by_bpp = aectl("compress", source, "--max-bpp", 8 * budget / (width * height), "-o", tmp_path / "bpp.aec")
    assert f"q{target}" in by_bpp.stdout
    tight = aectl("compress", source, "--max-bytes", 100, "-o", tmp_path / "tight.aec", check=False)
    assert tight.returncode != 0 and "does not fit" in tight.stderr and not (tmp_path / "tight.aec").exists()


def test_rate_control_finds_the_best_fit_in_few_encodes(kodak):
    """Trying the levels from the highest down encoded up to seven times (and kept seven codecs' memory) for a
    tight budget. The search guided by the manifests' kodak-dev rates must pick what that order picked (the
    highest level that fits, from each level's own file size) in at most three encodes, for every budget."""
    from aectl.runtime import AectlError
    from aectl.runtime.rate_control import QualityLadder

    source = kodak / "kodim07.png"
    sizes = {q: len(Codec(path, provider="cpu").compress(source)) for q, path in LEVELS.items()}
    qualities = sorted(sizes)
    budgets = [sizes[qualities[0]] - 1] + [(sizes[a] + sizes[b]) // 2 for a, b in zip(qualities, qualities[1:])]
    budgets.append(sizes[qualities[-1]])
    for budget in budgets:
        fitting = [q for q in qualities if sizes[q] <= budget]
        ladder = QualityLadder(LEVELS, provider="cpu")
        if not fitting:
            with pytest.raises(AectlError, match=rf"\(q{qualities[0]}\) needs {sizes[qualities[0]]} B"):
                ladder.compress_within(source, max_bytes=budget)
        else:
            data, chosen = ladder.compress_within(source, max_bytes=budget)
            assert chosen == fitting[-1] and len(data) == sizes[chosen], (budget, chosen, fitting)
        assert len(ladder.loaded) <= 3, (budget, ladder.loaded)
    assert QualityLadder(LEVELS, provider="cpu").compress_within(source, max_bytes=10**400)[1] == qualities[-1]


def test_rate_control_on_flat_images_whose_size_does_not_grow_with_quality(tmp_path):
    """A solid colour's file can be smaller at a higher level (the header and side information outweigh its few
    symbols): the search, which assumed sizes grow, kept q1 where q4 fitted, or refused a budget q3 met (a
    helper's review: 43 of 280 budgets on 20 solid colours). Every budget at or below each level's size must
    give what trying every level gives."""
    from aectl.runtime import AectlError
    from aectl.runtime.rate_control import QualityLadder

    ladder = QualityLadder(LEVELS, provider="cpu")
    checked = 0
    for colour in ((124, 29, 251), (0, 128, 255)):
        flat = np.full((128, 128, 3), colour, np.uint8)
        sizes = {q: len(ladder.codec(q).compress(flat)) for q in LEVELS}
        qualities = sorted(sizes)
        assert any(sizes[b] < sizes[a] for a, b in zip(qualities, qualities[1:])), (colour, sizes)  # the case
        for budget in sorted({size + d for size in sizes.values() for d in (-1, 0)}):
            fitting = [q for q in qualities if sizes[q] <= budget]
            if not fitting:
                with pytest.raises(AectlError, match=f"needs {min(sizes.values())} B"):
                    ladder.compress_within(flat, max_bytes=budget)
                continue
            data, chosen = ladder.compress_within(flat, max_bytes=budget)
            assert chosen == fitting[-1] and len(data) == sizes[chosen] <= budget, (colour, budget, sizes, chosen)
            checked += 1
    assert checked >= 20
    photo = tmp_path / "flat.png"  # the command line, on a budget the old search refused ("q1 needs 324 B")
    Image.fromarray(np.full((128, 128, 3), (124, 29, 251), np.uint8)).save(photo)
    sizes = {q: len(ladder.codec(q).compress(photo)) for q in LEVELS}
    qualities = sorted(sizes)
    budget = sizes[next(b for a, b in zip(qualities, qualities[1:]) if sizes[b] < sizes[a])]  # the first drop
    proc = aectl("compress", photo, "--max-bytes", budget, "-o", tmp_path / "f.aec", "--json")
    assert json.loads(proc.stdout)["files"][0]["quality"] == max(q for q in sizes if sizes[q] <= budget)


def test_a_files_own_bpp_is_a_budget_it_fits_and_budgets_are_checked(kodak, tmp_path):
    """--max-bpp was turned into bytes by rounding down, so the bpp a file reports could refuse that file (17x33:
    1.3689839572192513 bpp made a budget of 95 B for a 96 B file). A library caller's max_pixels=None failed on
    a path, max_bpp="0.5" was a TypeError and max_bytes=True meant 1 B; -m with a manifest whose architecture is
    not an object crashed; --max-pixels 0 or -5 refused every file one by one."""
    import shutil

    from aectl.runtime import AectlError
    from aectl.runtime.rate_control import QualityLadder

    odd = tmp_path / "odd.png"
    Image.open(kodak / "kodim01.png").convert("RGB").crop((100, 100, 117, 133)).save(odd)
    levels = shipped_qualities()
    ladder = QualityLadder(levels, provider="cpu", max_pixels=None)
    for quality in levels:
        report = json.loads(aectl("compress", odd, "-q", quality, "-o", tmp_path / f"q{quality}.aec", "--json").stdout)
        data, chosen = ladder.compress_within(odd, max_bpp=report["files"][0]["bpp"])
        assert len(data) <= report["files"][0]["bytes"] and chosen >= quality
    for budget in ({"max_bpp": "0.5"}, {"max_bytes": True}):
        with pytest.raises(AectlError, match="give a number"):
            ladder.compress_within(odd, **budget)
    listed = tmp_path / "listed"
    shutil.copytree(levels[min(levels)], listed)
    manifest = json.loads((listed / "manifest.json").read_text())
    manifest["architecture"] = ["x"]
    (listed / "manifest.json").write_text(json.dumps(manifest))
    tight = aectl("compress", odd, "-m", listed, "--max-bytes", 10, "-o", tmp_path / "x.aec", check=False)
    assert tight.returncode == 1 and tight.stderr.startswith(f"error: {odd}: does not fit in 10 B: this model "
                                                             "needs "), tight.stderr
    for command in (["compress", odd, "-o", tmp_path / "y.aec"], ["decompress", tmp_path / "q1.aec", "-o",
                                                                     tmp_path / "y.png"]):
        refused = aectl(*command, "--max-pixels", -5, check=False)
        assert refused.returncode == 1 and refused.stderr == "error: --max-pixels -5: give a positive pixel count\n"


def test_eval_writes_results_csv_and_plot(kodak, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "kodim03.png").symlink_to(kodak / "kodim03.png")
    (data / "._kodim03.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata: passed over
    os.mkfifo(data / "pipe.png")  # passed over, as compress and bench pass it over (eval opened it and hung)
    out = tmp_path / "eval"
    summary = json.loads(aectl("eval", "--data", data, "--baselines", "jpeg", "-o", out, "--json").stdout)
    assert sorted(p.name for p in out.iterdir()) == ["curves.csv", "per_image.csv", "rd.png", "results.json"]
    assert summary["provider"] == "cpu" and summary["session_providers"] == ["CPUExecutionProvider"]
    points = summary["curves"]["factorized"]
    assert len(points) == len(LEVELS) and all(0 < p["ms_ssim"] < 1 for p in points)
    versus = summary["comparisons"]["factorized"]["jpeg"]
    assert np.isfinite(versus["bd_rate_psnr"]) and np.isfinite(versus["bd_rate_ms_ssim"])
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0] == "codec,setting,image,bytes,bpp,psnr,ms_ssim" and len(rows) == 1 + len(LEVELS) + 11
    again = aectl("eval", "--data", data, "--baselines", "jpeg", "-o", out, check=False)
    assert again.returncode != 0 and "--force" in again.stderr
    unknown = aectl("eval", "--data", data, "--baselines", "gif", "-o", tmp_path / "e2", check=False)
    assert unknown.returncode != 0 and "gif" in unknown.stderr and not (tmp_path / "e2").exists()
    (tmp_path / "taken").write_text("a file where the results folder would go")
    blocked = aectl("eval", "--data", data, "--baselines", "jpeg", "-o", tmp_path / "taken" / "eval", check=False)
    assert blocked.returncode == 1 and blocked.stderr.strip().splitlines() == [
        f"error: cannot write into {tmp_path / 'taken' / 'eval'}: {tmp_path / 'taken'} is a file, not a folder"]


def test_eval_checks_its_outputs_and_models_before_measuring(kodak, tmp_path):
    """Refused before any measuring, each in one line: a dangling symlink at an output name (replaced without
    --force), a folder there (said "pass --force", which then failed after measuring), `-o` through a dangling
    symlink (failed after measuring: "File exists"), `-o` the --data folder (rd.png replaced a photo of that name,
    or was measured next time), two models on one curve point (averaged into one), a model curve named as a
    baseline (it joined the JPEG curve: "jpeg vs jpeg: BD-rate +0.0%")."""
    import shutil

    from aectl.runtime.registry import shipped_bundle

    data = tmp_path / "data"
    data.mkdir()
    Image.open(kodak / "kodim03.png").crop((0, 0, 192, 192)).save(data / "a.png")
    q1 = shipped_bundle(1)
    linked, folder = tmp_path / "linked", tmp_path / "folder"
    linked.mkdir()
    (linked / "results.json").symlink_to(tmp_path / "nowhere")
    (folder / "rd.png").mkdir(parents=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    for twin in ("other/factorized-q1", "jpeg"):
        shutil.copytree(q1, tmp_path / twin)
    cases = [((), linked, f"error: {linked / 'results.json'} exists"),
             ((), folder, f"error: {folder / 'rd.png'} is a folder; --force replaces files only"),
             (("--force",), folder, f"error: {folder / 'rd.png'} is a folder; --force replaces files only"),
             ((), tmp_path / "dangling" / "eval", f"error: cannot write into {tmp_path / 'dangling' / 'eval'}: "
                                                  f"{tmp_path / 'dangling'} is a symlink to a missing folder"),
             (("--force",), data, f"error: -o {data} is the --data folder"),
             # /proc takes no folder: access() passed it, and mkdir -p recursed to RecursionError after measuring
             # (as root; another user is told /proc is not writable)
             ((), Path("/proc/aectl-eval"), "error: cannot write into /proc/aectl-eval: "),
             (("-m", tmp_path / "other/factorized-q1"), tmp_path / "e1", f"error: -m {q1} and -m "
                                                                         f"{tmp_path / 'other/factorized-q1'} would "
                                                                         "both be point q1 of curve 'factorized'"),
             (("-m", tmp_path / "jpeg"), tmp_path / "e2", f"error: -m {tmp_path / 'jpeg'}: its curve would be "
                                                          "named 'jpeg', as a baseline's is")]
    # Measuring fails loudly in these runs: a refusal made only after it (as write_report's own checks are)
    # would read "internal error: RuntimeError: measured before refusing".
    unmeasured = ("import sys\nimport aectl.runtime.evaluate as ev\n"
                  "def measured(*args, **kwargs):\n    raise RuntimeError('measured before refusing')\n"
                  "ev.measure_bundle = ev.measure_baseline = measured\nsys.argv = ['aectl', *sys.argv[1:]]\n"
                  "from aectl.cli.main import main\nmain()")
    for args, out, message in cases:
        proc = subprocess.run([sys.executable, "-c", unmeasured, "eval", "-m", str(q1), *map(str, args), "--data",
                               str(data), "--baselines", "jpeg", "-o", str(out)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1 and proc.stderr.startswith(message), (out, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr
    long = tmp_path / "long"  # WebP's sides are 14 bits: found while coding, after the models' measuring
    long.mkdir()
    Image.new("RGB", (16400, 176), (90, 120, 150)).save(long / "l.png")
    proc = subprocess.run([sys.executable, "-c", unmeasured, "eval", "-m", str(q1), "--data", str(long),
                           "--baselines", "jpeg,webp", "-o", str(tmp_path / "e4")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and proc.stderr == f"error: --data {long}: l.png is 16400x176: webp codes sides of " \
                                                   "at most 16383 pixels; leave webp out of the baselines for it\n"
    Image.new("RGB", (32800, 176), (90, 120, 150)).save(long / "l.png")  # AVIF: written, then not read back
    proc = subprocess.run([sys.executable, "-c", unmeasured, "eval", "-m", str(q1), "--data", str(long),
                           "--baselines", "avif", "-o", str(tmp_path / "e4")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and proc.stderr == f"error: --data {long}: l.png is 32800x176: avif codes sides of " \
                                                   "at most 32768 pixels; leave avif out of the baselines for it\n"
    assert (linked / "results.json").is_symlink() and sorted(p.name for p in folder.iterdir()) == ["rd.png"]
    assert sorted(p.name for p in data.iterdir()) == ["a.png"]
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists() and not (tmp_path / "missing").exists()
    for given in (tmp_path / "none", data / "a.png"):  # said "no images found", as for an empty folder
        proc = aectl("eval", "-m", q1, "--data", given, "-o", tmp_path / "e3", check=False)
        assert proc.returncode == 1 and proc.stderr == f"error: --data {given}: not a folder\n", proc.stderr


def test_eval_writes_its_report_whole_or_not_at_all(kodak, tmp_path):
    """A full disk at rd.png left this run's results.json and CSVs beside the older run's plot; now the four
    files are all written before any is renamed. The model's folder is named with rich markup (`[/]`), which
    ended eval's progress line in an internal MarkupError."""
    import resource
    import shutil
    import signal

    from aectl.runtime.registry import shipped_bundle

    bundle = tmp_path / "[" / "]q1"
    shutil.copytree(shipped_bundle(1), bundle)
    one, two, out = tmp_path / "one", tmp_path / "two", tmp_path / "out"
    for folder, count in ((one, 1), (two, 2)):
        folder.mkdir()
        for i in range(count):
            Image.open(kodak / f"kodim0{i + 3}.png").crop((0, 0, 192, 192)).save(folder / f"{i}.png")
    aectl("eval", "-m", bundle, "--data", one, "--baselines", "jpeg", "-o", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["curves.csv", "per_image.csv", "rd.png", "results.json"]
    limit = (max(len(b) for b in before.values()) + min(len(b) for b in before.values())) // 2

    def full_disk():  # the largest file (the plot) cannot be written, the smallest can
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([aectl_exe(), "eval", "-m", bundle, "--data", two, "--baselines", "jpeg", "-o", out,
                           "--force"], capture_output=True, text=True, preexec_fn=full_disk)
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot write") and "File too large" in \
        proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the older report, whole, no temporary file"


def test_eval_says_why_a_bd_rate_is_missing(kodak, tmp_path):
    """A curve of one model point has no BD-rate; the console said only "n/a" (the reason was in results.json).
    A flat image beside the photo, which JPEG codes losslessly, keeps results.json strict JSON: an infinite PSNR
    is null (it was written as Infinity, which strict parsers refuse)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "kodim03.png").symlink_to(kodak / "kodim03.png")
    Image.new("RGB", (192, 192), (128, 128, 128)).save(data / "flat.png")  # 176 a side at least, for MS-SSIM
    shown = aectl("eval", "-q", 1, "--data", data, "--baselines", "jpeg", "-o", tmp_path / "e").stdout  # -q as -m
    why = "each curve needs at least four (rate, quality) points"
    assert f"factorized vs jpeg: BD-rate n/a (PSNR: {why}), n/a (MS-SSIM: {why})" in shown.splitlines()
    results = json.loads((tmp_path / "e" / "results.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    lossless = [row for row in results["per_image"] if row["image"] == "flat.png" and row["psnr"] is None]
    assert lossless and all(row["codec"] == "jpeg" for row in lossless)
    assert [point["setting"] for point in results["curves"]["factorized"]] == ["q1"]  # the quality -q named


def _piped(*args, data: bytes = b"", stdout=subprocess.PIPE):
    return subprocess.run([aectl_exe(), *map(str, args)], input=data, stdout=stdout, stderr=subprocess.PIPE)


def test_standard_input_and_output_as_unix_tools_read_them(kodak, tmp_path):
    """`-` as the input read standard input and `-o -` wrote a folder named "-" (compress: "-: no such file";
    `-o -` made ./-/kodim01.aec). Now they are pipes, as in gzip: the same bytes as through files, the report on
    stderr, binary data refused to a terminal, and one-line errors for what a pipe cannot do."""
    import pty

    photo = kodak / "kodim01.png"
    aectl("compress", photo, "-o", tmp_path / "file.aec")
    aectl("decompress", tmp_path / "file.aec", "-o", tmp_path / "file.png")
    aec = (tmp_path / "file.aec").read_bytes()

    piped = _piped("compress", "-", "-o", "-", data=photo.read_bytes())
    assert piped.returncode == 0 and piped.stdout == aec
    assert piped.stderr.decode().startswith("stdin -> stdout (768x512, ")
    assert _piped("compress", "-", data=photo.read_bytes()).stdout == aec  # no -o: standard output
    assert _piped("compress", photo, "-o", "-").stdout == aec
    assert _piped("compress", "-", "-o", tmp_path / "in.aec", data=photo.read_bytes()).returncode == 0
    assert (tmp_path / "in.aec").read_bytes() == aec

    image = _piped("decompress", "-", "-o", "-", data=aec)
    assert image.stdout.startswith(b"\x89PNG") and image.stderr.decode().startswith("stdin -> stdout")
    (tmp_path / "piped.png").write_bytes(image.stdout)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "piped.png")), np.asarray(Image.open(tmp_path / "file.png")))
    webp = _piped("decompress", tmp_path / "file.aec", "-o", "-", "--format", "webp")
    assert webp.returncode == 0 and webp.stdout[8:12] == b"WEBP"

    refusals = [
        (("compress", "-", photo), photo.read_bytes(), "error: - (standard input) must be the only input"),
        (("compress", kodak, "-o", "-"), b"", "error: -o - (standard output) takes one input file, not a folder"),
        (("compress", photo, "-o", "-", "--json"), b"", "error: --json prints on standard output, which -o - "),
        (("compress", "-", "-o", tmp_path / "x.png"), photo.read_bytes(), "error: -o x.png: compress writes"),
        (("compress", "-", "-o", tmp_path), photo.read_bytes(), f"error: -o {tmp_path}: reading standard input"),
        (("compress", "-", "-o", tmp_path / "in.aec"), photo.read_bytes(), "error: stdin: "),  # exists: --force
        (("compress", "-"), b"", "error: stdin: standard input is empty"),
        (("compress", "-"), aec, "error: stdin: already an .aec file"),
        (("compress", "-"), b"not an image", "error: stdin: cannot read image"),
        (("decompress", "-"), photo.read_bytes(), "error: stdin: not an .aec file"),
        (("compress", "-", "--engine", "ray"), photo.read_bytes(), "error: --engine ray reads and writes files"),
        # No -o was given: the message blamed "-o -".
        (("compress", "-", "--json"), photo.read_bytes(), "error: --json prints on standard output, where the file "
                                                           "goes when standard input is read without -o: give -o FILE"),
        # The local engine was told to use the local engine.
        (("compress", photo, "--max-bpp", 1, "-q", 2), b"", "error: --max-bytes/--max-bpp choose the quality "
                                                           "themselves: drop -q\n"),
        (("compress", photo, "--max-bpp", 1, "--engine", "ray"), b"", "error: --max-bytes/--max-bpp run on --engine "
                                                                     "local only, not ray\n"),
    ]
    for args, data, message in refusals:
        refused = _piped(*args, data=data)
        err = refused.stderr.decode().replace(f"{tmp_path}/", "")
        assert refused.returncode == 1 and err.startswith(message) \
            and err.count("\n") == 1 and not refused.stdout, (args, err)
    assert not (tmp_path / "-").exists() and not (tmp_path / "x.png").exists()

    closed = subprocess.run(["sh", "-c", f"exec {aectl_exe()} compress {photo} -o - >&-"], capture_output=True,
                            text=True)  # it said "internal error: AttributeError"
    assert closed.returncode == 1 and closed.stderr == "error: standard output is closed: give -o FILE\n"
    named = tmp_path / "named"  # ./- is a file called "-", as in gzip; only the bare word is a stream
    (named / "-").mkdir(parents=True)
    (named / "-" / "a.png").write_bytes(photo.read_bytes())
    subprocess.run([aectl_exe(), "compress", "./-", "-o", "./-"], cwd=named, check=True, capture_output=True)
    assert (named / "-" / "a.aec").read_bytes() == aec

    leader, follower = pty.openpty()  # a terminal on standard output gets no binary data
    try:
        to_terminal = _piped("compress", photo, "-o", "-", stdout=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert to_terminal.returncode == 1 and to_terminal.stderr.decode().startswith("error: refusing to write binary")


def test_standard_output_takes_the_whole_file_or_fails(kodak, tmp_path):
    """Under PYTHONUNBUFFERED (as in many containers), stdout is a raw FileIO whose write() may take part of the
    data: a file-size limit cut `-o -` at 4096 bytes and a reader that left after 10 bytes went unnoticed, exit 0
    and a success line. Now the rest is written or the run fails: one line, exit 1."""
    import resource
    import signal

    aec = tmp_path / "kodim01.aec"
    aectl("compress", kodak / "kodim01.png", "-o", aec)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    with open(tmp_path / "cut.png", "wb") as sink:
        cut = subprocess.run([aectl_exe(), "decompress", aec, "-o", "-"], stdout=sink, stderr=subprocess.PIPE,
                             text=True, env=env, preexec_fn=limit)
    assert cut.returncode == 1 and cut.stderr == f"error: {aec}: cannot write to standard output: File too large\n"

    for unbuffered in (env, os.environ):  # the PNG is ~600 KB, well past a pipe's 64 KB
        reader = subprocess.Popen([aectl_exe(), "decompress", aec, "-o", "-"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=unbuffered)
        assert reader.stdout.read(10).startswith(b"\x89PNG")
        reader.stdout.close()
        stderr = reader.stderr.read().decode()
        assert reader.wait(timeout=120) == 1 and "stdout (" not in stderr and "Traceback" not in stderr, stderr


def _stdin_peak_mb(data: bytes) -> float:
    """`aectl compress -` on `data`, in a process that reports its own peak resident memory (VmHWM) at exit."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(next(l.split()[1] for l in open('/proc/self/status')"
            " if l.startswith('VmHWM')), file=sys.stderr))\n"
            "sys.argv = ['aectl', 'compress', '-']\n"
            "from aectl.cli.main import main\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and lines[0].startswith("error: stdin: cannot read image"), lines
    return int(lines[-1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_standard_input_is_held_once(tmp_path):
    """`compress -` holds the stream in memory once: `head + read()` held it twice (1 GB of zeros piped in
    peaked at 2.0 GB, now 1.07 GB), before Pillow could say it is not an image."""
    size_mb = 256
    grown = _stdin_peak_mb(bytes(size_mb << 20)) - _stdin_peak_mb(b"x")
    assert grown < 1.4 * size_mb, f"{size_mb} MB on stdin raised the peak by {grown:.0f} MB"


def _peak_mb(*args: str) -> tuple[float, str]:
    """aectl run in a process that reports its own peak resident memory (VmHWM) at exit; (MB, stderr)."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(next(l.split()[1] for l in open('/proc/self/status')"
            " if l.startswith('VmHWM')), file=sys.stderr))\n"
            f"sys.argv = ['aectl', *{list(args)!r}]\n"
            "from aectl.cli.main import main\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    *lines, peak = proc.stderr.splitlines()
    return int(peak) / 1024, "\n".join(lines)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_huge_file_behind_a_valid_header_is_refused_before_it_is_read(kodak, tmp_path):
    """decompress and info read the whole file before comparing its size with the header's: 2 GB of (sparse)
    bytes after a valid file took 2.15 GB of memory and 4.4 s to be called corrupted."""
    Image.open(kodak / "kodim03.png").crop((0, 0, 64, 64)).save(tmp_path / "a.png")
    aectl("compress", tmp_path / "a.png", "-o", tmp_path / "a.aec")
    size = (tmp_path / "a.aec").stat().st_size
    with open(tmp_path / "big.aec", "wb") as fh:
        fh.write((tmp_path / "a.aec").read_bytes())
        fh.truncate(size + (512 << 20))
    for command, out in (("decompress", ["-o", str(tmp_path / "out")]), ("info", [])):
        small, _ = _peak_mb(command, str(tmp_path / "a.aec"), *out)
        big, err = _peak_mb(command, str(tmp_path / "big.aec"), *out)
        assert "corrupted .aec file (536870912 unexpected bytes after the end)" in err, err
        assert big - small < 64, f"{command}: 512 MB after the file raised the peak by {big - small:.0f} MB"


def test_folder_walks_find_every_photo_format_pillow_reads(kodak, tmp_path):
    """A folder of .avif, .jfif, JPEG 2000 or QOI photos was "no image files found": the walk knew twelve
    suffixes. Each is now coded, the same pixels as the PNG it was saved from where the format is lossless."""
    photo = Image.open(kodak / "kodim03.png").convert("RGB").crop((0, 0, 96, 64))
    folder = tmp_path / "photos"
    folder.mkdir()
    for suffix, fmt in ((".avif", "AVIF"), (".jfif", "JPEG"), (".jpe", "JPEG"), (".jp2", "JPEG2000"),
                        (".qoi", "QOI"), (".pnm", "PPM"), (".apng", "PNG")):
        photo.save(folder / f"a{suffix[1:]}{suffix}", format=fmt)
    report = json.loads(aectl("compress", folder, "-o", tmp_path / "out", "--json").stdout)
    assert report["ok"] == 7 and report["failed"] == 0
    coded = {Path(f["source"]).suffix: Path(f["target"]).read_bytes() for f in report["files"]}
    assert coded[".qoi"] == coded[".pnm"] == coded[".apng"]  # lossless: the same pixels, the same file


def test_heic_photos_are_read_through_pillow_heif(kodak, tmp_path):
    """Phones save HEIC, which Pillow reads only with pillow-heif's opener registered (aectl[heif], in `make
    test`'s install); without it, a .heic file says how to get it instead of "cannot identify image file"."""
    pytest.importorskip("pillow_heif")
    from aectl.runtime.image_io import heif_support

    assert heif_support()
    photo = Image.open(kodak / "kodim03.png").convert("RGB").crop((0, 0, 96, 64))
    folder = tmp_path / "phone"
    folder.mkdir()
    photo.save(folder / "IMG_0001.HEIC", format="HEIF", quality=90)
    report = json.loads(aectl("compress", folder, "-o", tmp_path / "out", "--json").stdout)
    assert report["ok"] == 1 and report["files"][0]["width"] == 96
    decoded = np.asarray(Image.open(folder / "IMG_0001.HEIC").convert("RGB"))
    assert (tmp_path / "out" / "IMG_0001.aec").read_bytes() == Codec(shipped_bundle(), provider="cpu").compress(decoded)
    script = ("import sys; sys.modules['pillow_heif'] = None\n"  # as if it were not installed
              "from aectl.runtime.image_io import read_rgb\n"
              f"read_rgb({str(folder / 'IMG_0001.HEIC')!r}, 1 << 20)\n")
    missing = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert missing.returncode != 0 and "reading HEIC/HEIF needs pillow-heif: pip install 'aectl[heif]'" in missing.stderr


def test_compress_and_info_name_the_quality_that_made_a_file(kodak, trained, tmp_path):
    """`compress --json` named a quality only when a budget chose it, and `info` gave the model id alone: which
    shipped quality made a file, and which bundle here decodes it, were not said."""
    Image.open(kodak / "kodim07.png").convert("RGB").crop((0, 0, 96, 64)).save(tmp_path / "x.png")
    for args, quality in (((), DEFAULT_QUALITY), (("-q", "2"), 2)):
        report = json.loads(aectl("compress", tmp_path / "x.png", *args, "--json", "--force").stdout)
        assert report["files"][0]["quality"] == quality, report
        info = json.loads(aectl("info", tmp_path / "x.aec", "--json").stdout)
        assert (Path(info["bundle"]), info["quality"]) == (LEVELS[quality].resolve(), quality), info
    assert "q2, " in aectl("compress", tmp_path / "x.png", "-q", "2", "--force").stdout
    own = trained["factorized"][1]  # a bundle outside the search path
    aectl("compress", tmp_path / "x.png", "-m", own, "-o", tmp_path / "own.aec")
    env = {k: v for k, v in os.environ.items() if k != "AECTL_BUNDLES"}
    info = subprocess.run([aectl_exe(), "info", tmp_path / "own.aec", "--json"], capture_output=True, text=True,
                          env=env, check=True)
    assert (json.loads(info.stdout)["bundle"], json.loads(info.stdout)["quality"]) == (None, None)
    table = subprocess.run([aectl_exe(), "info", tmp_path / "own.aec"], capture_output=True, text=True, env=env,
                           check=True)
    assert "none in the search path (decompress needs -m BUNDLE)" in " ".join(table.stdout.split())
    shutil.copytree(own, tmp_path / "found" / "own")  # found, but its decoder cut short: said why, as decompress
    with open(tmp_path / "found" / "own" / "decoder.onnx", "r+b") as fh:
        fh.truncate(1000)
    env["AECTL_BUNDLES"] = str(tmp_path / "found")
    info = subprocess.run([aectl_exe(), "info", tmp_path / "own.aec", "--json"], capture_output=True, text=True,
                          env=env, check=True)
    assert json.loads(info.stdout)["bundle"] is None and "decoder.onnx" in json.loads(info.stdout)["bundle_error"]


def test_the_search_path_does_without_a_home_folder(monkeypatch):
    """With no home folder to be found (HOME unset, a uid without a passwd entry) the search ended in an internal
    RuntimeError, for decompress without -m and for info; it now skips the user's bundle folder."""
    from aectl.runtime import registry

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("AECTL_BUNDLES", "/nowhere")
    monkeypatch.setattr(Path, "home", no_home)
    assert registry.search_paths() == [Path("/nowhere"), registry.SHIPPED]
    assert registry.find_bundle(registry.load_bundle(LEVELS[1]).model_id).path == LEVELS[1]


def test_a_budget_reads_its_files_back_under_the_raised_pixel_limit(kodak, monkeypatch):
    """Rate control read back each file it tried under the format's default limit (2^28 pixels), so an image
    between that and a raised max_pixels was coded, then refused: the twin of the Ray workers' read-back. The
    default stands at 1,000 pixels here for a 2^28-pixel image, out of reach on this machine."""
    from aectl.runtime import container
    from aectl.runtime.rate_control import QualityLadder

    image = np.asarray(Image.open(kodak / "kodim07.png").convert("RGB"))[:48, :64]
    monkeypatch.setattr(container.parse, "__defaults__", (1000,))
    data, quality = QualityLadder(LEVELS, provider="cpu", threads=1, max_pixels=10**6).compress_within(
        image, max_bytes=10**6)
    assert quality == max(LEVELS) and container.parse(data, 10**6)[0].width == 64
