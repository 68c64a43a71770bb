"""Human-readable views for `aectl info` and `aectl doctor`."""
from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from aectl.cli.json_out import json_text
from aectl.runtime.errors import AectlError
from aectl.runtime.outputs import check_writable_folder

# No markup: what these views print holds paths and manifest text, and a "[" in a folder's name was read as
# a style tag (a title lost "[v2]"; "[/]" ended `aectl info` in an internal MarkupError).
console = Console(markup=False)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def show_bundle(path: Path, json_out: bool = False) -> None:
    from aectl.runtime.bundle import load_bundle

    if path.is_file():
        raise AectlError(f"{path}: aectl info takes a bundle directory")
    b = load_bundle(path)
    m = b.manifest
    ent = m.get("entropy") or {}
    if json_out:
        absent = sorted(r for r, f in m["files"].items() if _absent(path, f))
        print(json_text({k: v for k, v in m.items() if k != "entropy"} | {"path": str(path),
                                                                          "entropy": _entropy_summary(ent),
                                                                          "absent_files": absent}))
        return
    table = Table(title=f"bundle {path}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    train = m.get("training") or {}
    rows = [
        ("model id", lambda: m["model_id"]),
        ("preset", lambda: f"{m['preset']} ({m.get('description', '')})"),
        ("architecture", lambda: ", ".join(f"{k}={v}" for k, v in m.get("architecture", {}).items())),
        ("input", lambda: m["input"]["rule"] + f", values in {m['input']['value_range']}"),
        ("latent", lambda: m["latent"]["rule"]),
        ("files", lambda: ", ".join(f"{r}: {f['path']} ({_precision(f)}{f.get('bytes', '?')} B, sha256 "
                                    f"{f['sha256'][:12]}...){_absent(path, f)}" for r, f in m["files"].items())),
        ("opset", lambda: _opset(m)),
        ("entropy tables", lambda: f"{len(ent['cdfs'])} channels, {ent['precision']}-bit, step {ent['step']:.4g}, "
                                   f"tail mass {ent['tail_mass']:g}"),
        ("entropy classes", lambda: _classes(ent)),
        ("parity", lambda: _parity(m)),
        ("training", lambda: f"{train['steps']} steps{_stage(train)}, seed {train['seed']}, data {train['data']}"),
        ("command", lambda: str(train["command"])),
        *([("resumed with", lambda: "; ".join(map(str, train["resumed_with"])))]
          if isinstance(train, dict) and train.get("resumed_with") else []),
        ("final metrics", lambda: ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in (train.get("metrics") or {}).items())),
    ]
    for name, text in rows:
        try:
            table.add_row(name, text())
        except (KeyError, TypeError, AttributeError, ValueError):  # descriptive fields the codec does not read
            table.add_row(name, "- (missing or malformed in manifest.json)")
    console.print(table)


def _absent(bundle: Path, entry: dict) -> str:
    """A listed file the folder lacks (a hand-copied decoder-only folder keeps the encoder's entry): info showed
    it like the others."""
    try:
        return "" if (bundle / entry["path"]).is_file() else " MISSING"
    except OSError:
        return " UNREADABLE"


DOCTOR_PACKAGES = ("aectl", "numpy", "constriction", "pillow", "typer", "rich", "torch", "onnx", "onnxscript")


def doctor_report() -> dict:
    """What doctor finds, as data: versions, onnxruntime's distributions, each provider's verdict, the default
    thread count, and `problem`: why aectl cannot run here at all (no working onnxruntime CPU provider), or None.
    GPU providers that do not run are reported, not a problem: the CPU serves every command."""
    from aectl.runtime.cores import cpu_quota, default_threads, physical_cores, usable_cpus
    from aectl.runtime.providers import EXECUTION_PROVIDERS, import_ort, installed_distributions, usable_providers

    report = {"python": sys.version.split()[0], "platform": platform.platform(),
              "packages": {dist: _version(dist) for dist in DOCTOR_PACKAGES},
              "onnxruntime_distributions": installed_distributions(), "onnxruntime_import_error": None,
              "providers": dict.fromkeys(EXECUTION_PROVIDERS), "problem": None}
    try:
        import_ort()  # the runtime's own words where onnxruntime is missing or its import fails
        report["providers"] = usable_providers()
        if report["providers"]["cpu"] != "works":
            report["problem"] = ("onnxruntime's CPU provider does not run here: "
                                 f"{report['providers']['cpu'].removeprefix('fails: ')}")
    except AectlError as exc:  # installed but not importable: the reason is what doctor is for
        report["onnxruntime_import_error"] = report["problem"] = str(exc)
    cpus = usable_cpus()
    report["threads"] = {"default": default_threads(), "usable_logical_cpus": len(cpus),
                         "physical_cores": physical_cores(cpus), "cgroup_quota": cpu_quota()}
    return report


def show_doctor(json_out: bool = False) -> str | None:
    """Print doctor's table (or its report as JSON); return the report's problem, or None."""
    report = doctor_report()
    if json_out:
        print(json_text(report))
        return report["problem"]
    table = Table(title="aectl doctor", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("python", f"{report['python']} ({report['platform']})")
    for dist, version in report["packages"].items():
        table.add_row(dist, version or "not installed")
    dists = report["onnxruntime_distributions"]
    table.add_row("onnxruntime distributions", ", ".join(f"{k} {v}" for k, v in dists.items()) or "none")
    if "onnxruntime" in dists and "onnxruntime-gpu" in dists:
        table.add_row("warning", "onnxruntime and onnxruntime-gpu are both installed and overwrite each other")
    for name, verdict in report["providers"].items():
        if verdict is not None:  # None: onnxruntime did not import, which the next row says
            table.add_row(f"provider {name}", verdict)
    if report["onnxruntime_import_error"] and dists:
        table.add_row("onnxruntime import", f"fails: {report['onnxruntime_import_error']}")
    threads = report["threads"]
    table.add_row("cpu threads", f"{threads['default'] or 'onnxruntime chooses'} by default (--threads): "
                                 f"{threads['usable_logical_cpus']} usable logical CPUs, "
                                 f"{threads['physical_cores'] or 'unknown'} physical cores, cgroup quota "
                                 f"{threads['cgroup_quota'] or 'none'}")
    console.print(table)
    return report["problem"]


def show_aec(path: Path, json_out: bool = False, data: bytes | None = None) -> None:
    """An .aec file's header; `data`: the file's bytes where they came from standard input (path "stdin")."""
    from aectl.runtime.container import MAX_SIDE, describe, parse
    from aectl.runtime.files import read_header

    # Only the header is shown and nothing is allocated from its sizes: no pixel limit (one suggested
    # --max-pixels, which info does not have, for a file over the decoders' default).
    if data is None:
        header, size = read_header(path, max_pixels=MAX_SIDE * MAX_SIDE), path.stat().st_size
    else:
        try:
            header, size = parse(data, MAX_SIDE * MAX_SIDE)[0], len(data)
        except AectlError as exc:
            raise AectlError(f"{path}: {exc}") from None
    fields = describe(header) | {"file_bytes": size, "bpp": 8 * size / (header.width * header.height)}
    fields |= _decoded_by(header.model_id)
    if json_out:
        print(json_text(fields))
        return
    if fields["bundle"] is None:
        fields["bundle"] = fields.pop("bundle_error", "none in the search path (decompress needs -m BUNDLE)")
    if fields["quality"] is None:
        del fields["quality"]
    table = Table(title=f".aec file {path}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in fields.items():
        table.add_row(key.replace("_", " "), f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def _decoded_by(model_id: str) -> dict:
    """The bundle decompress would take for a file without -m (registry.find_bundle), and its quality: info gave
    the model id alone, which does not say which shipped quality made a file, or whether this machine decodes it."""
    from aectl.runtime.registry import NoBundle, find_bundle, manifest_quality

    try:
        bundle = find_bundle(model_id)
    except NoBundle:
        return {"bundle": None, "quality": None}
    except AectlError as exc:  # a match that does not load (a decoder cut short): why, as decompress says it
        return {"bundle": None, "quality": None, "bundle_error": str(exc)}
    return {"bundle": str(bundle.path), "quality": manifest_quality(bundle.manifest)}


def _stage(train: dict) -> str:
    """A shipped bundle's steps are its recipe's last stage, not all its training (the demo said 11000 of 42840)."""
    return " in its recipe's last stage" if "recipe" in train else ""


def _classes(entropy: dict) -> str:
    """Whether the tables are classified (export --entropy-classes) and how many classes shipped (unused ones
    are dropped at export): info showed nothing of them."""
    classes = entropy.get("classes")
    if not classes:
        return "none (one table per channel)"
    fit = classes.get("fit") or {}
    return f"{classes['count']}, fitted on {fit.get('positions', '?')} latent positions from {fit.get('data', '?')}"


def _entropy_summary(entropy: dict) -> dict:
    """The entropy section for `info --json` without its tables (thousands of numbers)."""
    classes = entropy.get("classes") or {}
    return {k: entropy.get(k) for k in ("precision", "step", "tail_mass")} | {
        "channels": len(entropy.get("cdfs", [])), "classes": classes.get("count", 0)}


def _share_of_peak(rate: dict, precision: str) -> str:
    """The peak is an fp32 matmul's: an int8 or fp16 network is measured against it too, and says so (an int8
    decoder can pass 100%)."""
    if rate["percent_of_peak"] is None:
        return ""
    if precision == "fp32":
        return f" ({rate['percent_of_peak']:.0f}% of peak)"
    return f" ({rate['percent_of_peak']:.0f}% of the fp32 peak; {precision} network)"


def _precision(entry: dict) -> str:
    """'int8, ' for a reduced-precision file; nothing for fp32 (and for bundles from before precisions)."""
    return f"{entry['precision']}, " if entry.get("precision", "fp32") != "fp32" else ""


def _opset(m: dict) -> str:
    """The traced graphs' opset, and a converted file's own where it differs (int8 QDQ needs 21)."""
    traced = m.get("opset")
    own = [(r, f) for r, f in m["files"].items() if f.get("conversion", {}).get("opset", traced) != traced]
    return str(traced) + "".join(f" ({f['precision']} {r}: {f['conversion']['opset']})" for r, f in own)


def _parity(m: dict) -> str:
    """The fp32 graphs' parity, then each reduced-precision file's own check against its own tolerance."""
    text = f"max diff {m.get('parity', {}).get('max_abs_diff', float('nan')):.2e} <= {m.get('tolerance')}"
    reduced = [(r, f) for r, f in m["files"].items() if f.get("precision", "fp32") != "fp32"]
    if not reduced:
        return text
    return f"{text} (fp32 graphs); " + "; ".join(
        f"{f['precision']} {r}: max |torch fp32 - {f['precision']}| {f['parity']['max_abs_diff']:.2e} <= "
        f"{f['tolerance']['max_abs_diff']:g}, least PSNR {f['parity']['min_psnr_db']:.1f} dB" for r, f in reduced)


def show_models(json_out: bool = False) -> None:
    """Shipped bundles with the kodak-dev figures recorded in their manifests."""
    from aectl.runtime.registry import DEFAULT_QUALITY, shipped_bundle, shipped_qualities

    levels = shipped_qualities()
    default = shipped_bundle(None) if levels else None
    rows = []
    for quality, path in levels.items():
        manifest = json.loads((path / "manifest.json").read_text())
        mean = manifest.get("evaluation", {}).get("mean", {})
        arch = manifest.get("architecture", {})
        rows.append({"name": path.name, "quality": quality, "default": path == default,
                     "bpp": mean.get("bpp"), "psnr": mean.get("psnr"), "ms_ssim": mean.get("ms_ssim"),
                     "evaluated_on": manifest.get("evaluation", {}).get("data"), "lmbda": arch.get("lmbda"),
                     "n": arch.get("n"), "m": arch.get("m"), "model_id": manifest.get("model_id"), "path": str(path)})
    if json_out:
        print(json_text({"default_quality": DEFAULT_QUALITY, "models": rows}))
        return
    if not rows:
        console.print("no models ship with this install")
        return
    table = Table(title="shipped models (use with -q N; figures: mean over kodak-dev)")
    for col in ("quality", "name", "bpp", "PSNR dB", "MS-SSIM", "lambda"):
        table.add_column(col)
    for r in rows:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        table.add_row(f"{r['quality']}{' (default)' if r['default'] else ''}", r["name"], fmt(r["bpp"], ".3f"),
                      fmt(r["psnr"], ".2f"), fmt(r["ms_ssim"], ".4f"), fmt(r["lmbda"], "g"))
    print_whole(table)


def show_eval(bundles, data: Path, baselines: list[str], out: Path, provider: str, threads, force: bool,
              json_out: bool) -> None:
    from rich.text import Text

    from aectl.cli.rd_report import check_outputs, pyplot, summary, write_report
    from aectl.runtime.evaluate import evaluate
    from aectl.runtime.registry import shipped_qualities

    pyplot()  # refuse before minutes of measuring, not after
    check_writable_folder(out)
    check_outputs(out, force)  # a dangling symlink or a folder at an output name, before measuring
    if out.resolve() == data.resolve():  # rd.png replaced a photo of that name, or was measured on the next run
        raise AectlError(f"-o {out} is the --data folder: rd.png would be one of its images; write the results "
                         "elsewhere")
    bundles = list(bundles or shipped_qualities().values())
    if not bundles:
        raise AectlError("no models given and none ship with this install: pass -m BUNDLE")
    err = Console(stderr=True, markup=False)
    with err.status("measuring") as status:
        result = evaluate(bundles, data, baselines, provider, threads,
                          progress=lambda what: status.update(Text(what)))  # a path is no markup
    written = write_report(result, out, force=force)
    if json_out:
        print(json_text(summary(result)))
        return
    for codec, points in result["curves"].items():
        table = Table(title=codec)
        for col in ("setting", "bpp", "PSNR dB", "MS-SSIM"):
            table.add_column(col)
        for p in points:
            table.add_row(p["setting"], f"{p['bpp']:.3f}", f"{p['psnr']:.2f}", f"{p['ms_ssim']:.4f}")
        print_whole(table)
    for model, against in result["comparisons"].items():
        for baseline, c in against.items():
            console.print(f"{model} vs {baseline}: BD-rate " + ", ".join(
                f"{c[key]:+.1f}% ({metric})" if c[key] is not None else f"n/a ({metric}: {c[key + '_why']})"
                for key, metric in (("bd_rate_psnr", "PSNR"), ("bd_rate_ms_ssim", "MS-SSIM"))),
                soft_wrap=True, highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in written))


def print_whole(table: Table) -> None:
    """Print a table at its natural width even on a narrower console (rich gives a pipe or a CI log 80
    columns, and shrinks a wider table by cutting its cells): a figure cut to fit would read as another figure."""
    natural = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
    if natural <= console.width:
        console.print(table)
    else:
        Console(file=console.file, width=natural, color_system=console.color_system,
                force_terminal=console.is_terminal, markup=False).print(table)


def _count(n: int, noun: str) -> str:
    """`1 image`, `12 images`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def show_bench(result: dict) -> None:
    """Tables for `aectl bench`; --json prints everything these summarise."""
    imgs, m, cfg = result["images"], result["machine"], result["config"]
    sizes = ", ".join(f"{n} x {s}" for s, n in imgs["sizes"].items())
    console.print(f"bench {result['bundle']['path']} on {_count(imgs['count'], 'image')} ({sizes}), "
                  f"{_count(cfg['threads'], 'thread')}, {_count(cfg['repeats'], 'repeat')} (median pass); "
                  f"{m['processor']}, load average "
                  f"{format(m['load_average_before'][0], '.2f') if m['load_average_before'] else '?'}")
    if "rate" in result:
        console.print("; ".join([f"aectl: {result['rate']['bpp']:.3f} bpp, {result['rate']['psnr']:.2f} dB"] + [
            f"{name} (Pillow): {b['bpp']:.3f} bpp, {b['psnr']:.2f} dB" for name, b in result.get("baselines", {}).items()]))
    for provider, entry in result["providers"].items():
        # Compact (79 columns with CPU figures) so that it fits a pipe's or a CI log's 80.
        table = Table(title=f"throughput on {provider} (time split in % of the pass)", box=box.SIMPLE_HEAD,
                      pad_edge=False, collapse_padding=True)
        for col in ("engine", "batch", "direction", "Mpx/s", "img/s", "io", "net", "quant", "entropy",
                    "cont."):
            table.add_column(col, justify="right" if col not in ("engine", "direction") else "left",
                             no_wrap=True)
        skipped = []
        for engine, runs in entry["engines"].items():
            if "skipped" in runs:
                skipped.append(f"{engine} on {provider}: skipped, {runs['skipped']}")
                continue
            for bkey, rec in runs.items():
                for direction in ("compress", "decompress"):
                    r = rec[direction]
                    table.add_row("ort" if engine == "onnxruntime" else engine, bkey.split("_")[1], direction,
                                  f"{r['mpx_per_s']:.2f}", f"{r['images_per_s']:.2f}",
                                  *(f"{100 * r['shares'][k]:.1f}" for k in
                                    ("io", "network", "quantize", "entropy", "container")))
        for name, base in result.get("baselines", {}).items():
            for direction in ("compress", "decompress"):
                r = base[direction]
                table.add_row(name, "1", direction,
                              f"{r['mpx_per_s']:.2f}", f"{r['images_per_s']:.2f}", *[""] * 5)
        print_whole(table)
        for line in skipped:
            console.print(line, soft_wrap=True, highlight=False)
        for bkey, ratios in entry.get("ratios", {}).items():
            if ratios:
                console.print(f"{bkey}: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in ratios.items()))
        peak = entry.get("peak", {})
        if "macs_per_s" in peak:
            console.print(f"matmul peak ({peak['method']}): {peak['macs_per_s'] / 1e9:.1f} GMAC/s")
        elif "skipped" in peak:
            console.print(f"matmul peak: skipped, {peak['skipped']}", soft_wrap=True, highlight=False)
        precision = result.get("bundle", {}).get("precision", {})
        for engine, rows in entry.get("efficiency", {}).items():
            for bkey, row in rows.items():
                console.print(f"{engine} {bkey}: " + ", ".join(
                    f"{role} {r['macs_per_s'] / 1e9:.1f} GMAC/s" + _share_of_peak(r, precision.get(role, "fp32"))
                    for role, r in row.items()))
    if "error" in (result.get("macs") or {}):
        console.print(f"MAC rates: skipped, {result['macs']['error']}", soft_wrap=True, highlight=False)
