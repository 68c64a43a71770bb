"""The `aectl` command line: a thin typer layer over library calls. Errors print one line and exit non-zero."""
from __future__ import annotations

import codecs
import io
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from aectl.runtime.errors import (AectlError, command_line, exists_error, missing_extra, one_line, received_signals,
                                  require_extra)
from aectl.runtime.outputs import check_writable_folder


def _path(value: str) -> Path:
    """A path option as typer makes one, but "" is refused: pathlib reads it as "." and the working folder was
    taken for a bundle, an image folder or an output."""
    if value == "":
        raise typer.BadParameter('"": give a file or a folder (. for this one)')
    return Path(value)


PATH = {"parser": _path, "metavar": "<path>"}  # for every Path option below

THREADS_HELP = ("onnxruntime intra-op threads, 1 up to 4 per CPU of the machine (default: one per physical core "
                "this process may use; 0: onnxruntime's own choice, which pins its threads)")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Learned image compression: train in PyTorch, export to ONNX, compress with onnxruntime.")


def _print_version(asked: bool) -> None:
    if asked:
        from importlib import metadata

        typer.echo(f"aectl {metadata.version('aectl')}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print aectl's version and exit")) -> None:
    """Learned image compression: train in PyTorch, export to ONNX, compress with onnxruntime."""


def _channels(value: Optional[str]) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    try:
        n, m = (int(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter("expected N,M, e.g. 128,192") from None
    return n, m


@app.command()
def train(
    preset: Optional[str] = typer.Option(None, help="seed-conv, seed-dense or factorized (a resumed run: its own)"),
    data: Optional[str] = typer.Option(None, help="folder of images (recursive), or 'stl10' with --data-root "
                                       "(a resumed run: its own)"),
    out: str = typer.Option(..., "--out", "-o", help="run directory for checkpoints and logs"),
    steps: Optional[int] = typer.Option(None, help="total optimisation steps, or --epochs (default: one epoch)"),
    epochs: Optional[int] = typer.Option(None, help="total epochs, or --steps (an epoch covers the training "
                                         "pixels once)"),
    batch_size: Optional[int] = typer.Option(None, help="default: the preset's"),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate; default: the preset's"),
    seed: Optional[int] = typer.Option(None, help="makes runs repeatable; default 0"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out exactly where it stopped, with "
                                "the options it was started with"),
    force: bool = typer.Option(False, "--force", help="start a new run in --out, replacing the run files already "
                               "there"),
    quality: Optional[int] = typer.Option(None, "--quality", "-q", help="factorized: 1..8 (lambda, N/M table); "
                                          "default 3"),
    channels: Optional[str] = typer.Option(None, help="factorized: N,M channel counts, overriding the quality's"),
    crop: Optional[int] = typer.Option(None, help="training crop side; default: the preset's"),
    data_root: Optional[Path] = typer.Option(None, **PATH, help="with --data stl10: folder holding stl10_binary/"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads, 1 up to 4 per CPU of the machine "
                                          "(default: torch's own; a resumed run: its own)"),
    fit_steps: Optional[int] = typer.Option(None, help="steps fitting the entropy model: seed presets after "
                                            "training, --init-from BUNDLE before it; default 1000"),
    init_from: Optional[Path] = typer.Option(None, **PATH, help="start from the weights of another run, checkpoint or "
                                             "exported bundle (its density is refitted)"),
    checkpoint_every: float = typer.Option(60.0, help="seconds between checkpoints (also saved on Ctrl-C/SIGTERM)"),
    stop_at: Optional[int] = typer.Option(None, help="pause at this step with a checkpoint (the learning-rate "
                                          "schedule still follows --steps); continue with --resume"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train a preset on real images; checkpoints go to --out."""
    from aectl.train.run_options import TrainConfig, resolve_run

    require_extra("torch")

    cfg = TrainConfig(preset=preset, data=data, out=out, quality=quality, channels=_channels(channels),
                      steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      resume=resume, data_root=str(data_root) if data_root else None, threads=threads, crop=crop,
                      fit_steps=fit_steps, init_from=str(init_from) if init_from else None,
                      checkpoint_every=checkpoint_every, stop_at=stop_at, force=force)
    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    cfg, resumed = resolve_run(cfg, log)  # every option checked before torch loads, the data and the model
    from aectl.train.loop import train as run_training
    if cfg.preset in ("seed-conv", "seed-dense"):
        from aectl.train.report import parameter_table
        parameter_table(cfg.preset)
    final = run_training(cfg, progress=progress and sys.stderr.isatty(), log=log, resolved=(cfg, resumed))
    if final:
        typer.echo(f"final validation: PSNR {final['val_psnr']:.2f} dB, est. {final['val_bpp']:.3f} bpp")


@app.command()
def export(
    source: Path = typer.Argument(..., parser=_path, metavar="SOURCE", help="run directory (its latest checkpoint) "
                                  "or checkpoint file"),
    out: Path = typer.Option(..., "--out", "-o", **PATH, help="bundle directory to write"),
    force: bool = typer.Option(False, "--force", help="replace an existing bundle (only a bundle or an empty folder)"),
    decoder_only: bool = typer.Option(False, "--decoder-only", help="write an edge bundle: decoder and manifest only"),
    ort: bool = typer.Option(False, "--ort", help="also write decoder.ort (ORT format, for mobile/minimal builds; fp32 "
                             "only)"),
    precision: str = typer.Option("fp32", help="decoder precision: fp32, fp16 or int8 (the encoder stays fp32; "
                                 "int8 for factorized models)"),
    calibration: Optional[str] = typer.Option(None, help="--precision int8/fp16 and --entropy-classes: folder of "
                                              "real photos to calibrate, check and fit on; default: the run's "
                                              "training data"),
    entropy_classes: int = typer.Option(0, "--entropy-classes", help="fit this many classified entropy tables "
                                        "(2..64, 8 for the shipped models; smaller files, same pictures; fully "
                                        "convolutional models only); 0: off"),
) -> None:
    """Export a checkpoint to encoder.onnx + decoder.onnx + manifest.json, verified against torch."""
    from aectl.export.request import check_export_request

    check_export_request(source, out, force, precision, ort, calibration, entropy_classes)  # before torch loads
    from aectl.export.onnx_export import export_bundle

    export_bundle(source, out, force=force, decoder_only=decoder_only, ort=ort, precision=precision,
                  calibration=calibration, entropy_classes=entropy_classes, log=typer.echo)


@app.command()
def verify(
    bundle: Path = typer.Argument(..., parser=_path, metavar="BUNDLE", help="bundle directory"),
    source: Path = typer.Argument(..., parser=_path, metavar="SOURCE", help="run directory or checkpoint the bundle "
                                  "was exported from"),
    provider: str = typer.Option("cpu", help="onnxruntime provider to check: cpu, cuda, tensorrt or auto"),
    images: Optional[str] = typer.Option(None, help="real photos to check an fp16/int8 decoder on (default: the "
                                         "run's training data, as at export)"),
) -> None:
    """Re-run the torch vs onnxruntime parity check of a bundle on demand."""
    from aectl.runtime.providers import check_provider_name

    check_provider_name(provider)  # before torch and the exporter load (2-3 s)
    from aectl.export.parity import verify_bundle
    from aectl.export.request import given_folder

    if images == "":  # checked even where the bundle is fp32 and it goes unused (a note, exit 0)
        given_folder(images, "--images", "")

    report = verify_bundle(bundle, source, provider=provider, images=images)
    if report["cases"]:
        cases = len(report["cases"])
        typer.echo(f"ok: {bundle} matches {source} on {report['provider']}: {report['checked']} max "
                   f"|torch - onnxruntime| = {report['max_abs_diff']:.2e} <= {report['tolerance']:.0e} over {cases} "
                   f"case{'' if cases == 1 else 's'}")
    if "decoder" in report:
        dec = report["decoder"]
        typer.echo(f"ok: {dec['precision']} decoder within its tolerance on {dec['provider']}: "
                   f"max |torch fp32 - {dec['precision']}| = {dec['max_abs_diff']:.2e} <= "
                   f"{dec['tolerance']['max_abs_diff']:g}, least PSNR "
                   f"{dec['min_psnr_db']:.1f} >= {dec['tolerance']['min_psnr_db']:g} dB over {len(dec['cases'])} "
                   "real crops")
    elif images is not None:  # it was ignored without a word
        typer.echo(f"note: --images is for fp16/int8 decoders; {bundle}'s fp32 graphs were checked on the "
                   "export's own parity inputs", err=True)
    if "decoder_ort" in report:
        ort = report["decoder_ort"]
        typer.echo(f"ok: {ort['file']} matches {source} on {ort['provider']}: max |torch - onnxruntime| = "
                   f"{ort['max_abs_diff']:.2e} <= {ort['tolerance']:.0e}")


bundle_app = typer.Typer(no_args_is_help=True, help="Operations on bundle directories.")
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("strip")
def bundle_strip(
    source: Path = typer.Argument(..., parser=_path, metavar="SOURCE", help="bundle directory"),
    out: Path = typer.Option(..., "--out", "-o", **PATH, help="decoder-only bundle to write"),
    force: bool = typer.Option(False, "--force", help="replace an existing output"),
    ort: bool = typer.Option(False, "--ort", help="keep only decoder.ort (onnxruntime's minimal and mobile builds; "
                             "the bundle must have been exported with --ort)"),
) -> None:
    """Copy a bundle without its encoder, for clients that only decompress."""
    from aectl.runtime.bundle import strip_bundle

    stripped = strip_bundle(source, out, force=force, ort_only=ort)
    typer.echo(f"wrote {out} (decoder-only{', ORT format' if ort else ''}, model {stripped.model_id})")


def _needs_stdout(what: str, hint: str = "") -> None:
    """Refuse where standard output is closed (`>&-`): print() then writes nowhere, and what the command is for
    was lost with exit 0 (`compress -o -` said so already)."""
    if sys.stdout is None:
        raise AectlError(f"standard output is closed, and {what} is printed there{hint}")


@app.command()
def info(
    target: str = typer.Argument(..., help="a bundle directory or an .aec file (- reads standard input)"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Print what a bundle's manifest or an .aec file's header holds."""
    from aectl.cli.show import show_aec, show_bundle

    _needs_stdout("what info finds")
    if target == "-":  # as compress and decompress read it; ./- is a file named "-"
        from aectl.cli.batch import read_stdin
        from aectl.runtime.container import check_magic

        try:
            data = read_stdin(check_magic)
        except AectlError as exc:
            raise AectlError(f"stdin: {exc}") from None
        return show_aec(Path("stdin"), json_out, data)
    if target == "":  # pathlib reads it as ".": the working folder was taken for a bundle
        raise AectlError('"": give a bundle folder or an .aec file')
    target = Path(target)
    if not target.exists():
        raise AectlError(f"{target}: no such file or directory")
    if target.is_dir():
        return show_bundle(target, json_out)
    if not target.is_file():  # a FIFO or a device was "not a bundle directory"
        raise AectlError(f"{target}: not a regular file")
    show_aec(target, json_out)


@app.command()
def compress(
    inputs: list[str] = typer.Argument(..., help="image files or directories (recursive); - reads standard input"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", **PATH,
                                         help="bundle directory; default: a shipped model"),
    quality: Optional[int] = typer.Option(None, "--quality", "-q", help="shipped model quality (see `aectl models`); "
                                          "default: 4"),
    max_bytes: Optional[int] = typer.Option(None, help="per image, the best shipped quality (with -m: that "
                                            "bundle only) whose file fits in this many bytes; not with -q"),
    max_bpp: Optional[float] = typer.Option(None, help="the same as --max-bytes, in bits per pixel"),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="<path>",
                                      help="output directory (or .aec file for one input; - for standard output); "
                                           "default: next to each input (standard output for -)"),
    provider: str = typer.Option("auto", help="onnxruntime provider: auto (CUDA if it works, else CPU), cpu, cuda or tensorrt"),
    force: bool = typer.Option(False, "--force", help="overwrite existing outputs"),
    json_out: bool = typer.Option(False, "--json", help="print per-file results as JSON"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    max_pixels: int = typer.Option(1 << 28, help="refuse images larger than this many pixels"),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="stop at the first file that fails"),
    engine: str = typer.Option("local", help="local, or ray (Ray Data on $RAY_ADDRESS or a local Ray)"),
    workers: Optional[int] = typer.Option(None, help="--engine ray: parallel workers (each loads the bundle once, and "
                                         "runs 1 onnxruntime thread unless --threads says); default 1"),
    format_version: Optional[int] = typer.Option(None, "--format-version", help=".aec format version to write; "
                                                 "default: the current (4); 1, 2 or 3 for decoders of older "
                                                 "aectl releases (docs/aec-format.md)"),
) -> None:
    """Compress images into .aec files."""
    from aectl.cli.batch import compress_files, stream_paths

    if json_out:
        _needs_stdout("--json's report")
    inputs, out, out_is_folder = stream_paths(inputs, out)
    raise typer.Exit(compress_files(inputs, model, out, provider, force, json_out, threads, max_pixels, fail_fast,
                                    engine, workers, quality=quality, max_bytes=max_bytes, max_bpp=max_bpp,
                                    format_version=format_version, out_is_folder=out_is_folder))


@app.command()
def decompress(
    inputs: list[str] = typer.Argument(..., help=".aec files or directories (recursive); - reads standard input"),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="<path>",
                                      help="output directory (or image file for one input; - writes standard "
                                           "output, in --format, default png); default: next to each input "
                                           "(standard output for -)"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", **PATH,
                                         help="bundle; default: the one with the file's model id in $AECTL_BUNDLES, "
                                         "~/.local/share/aectl/bundles or the shipped models"),
    provider: str = typer.Option("auto", help="onnxruntime provider: auto (CUDA if it works, else CPU), cpu, cuda or tensorrt"),
    image_format: Optional[str] = typer.Option(None, "--format", help="output image format (file suffix): png, bmp, "
                                               "tiff, ...; default: the suffix of -o FILE for one input, else png"),
    force: bool = typer.Option(False, "--force", help="overwrite existing outputs"),
    json_out: bool = typer.Option(False, "--json", help="print per-file results as JSON"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    max_pixels: int = typer.Option(1 << 28, help="refuse files declaring more pixels than this"),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="stop at the first file that fails"),
    png_compression: Optional[int] = typer.Option(None, "--png-compression",
                                                  help="zlib level of PNG outputs, 0-9; default 1, which writes a "
                                                       "768x512 image ~4x faster than Pillow's own 6, in a file ~8% "
                                                       "larger"),
) -> None:
    """Decompress .aec files back to images."""
    from aectl.cli.batch import decompress_files, stream_paths

    if json_out:
        _needs_stdout("--json's report")
    inputs, out, out_is_folder = stream_paths(inputs, out)
    raise typer.Exit(decompress_files(inputs, out, model, provider, image_format, force, json_out, threads,
                                      max_pixels, fail_fast, png_compression, out_is_folder))


def _batch_sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise typer.BadParameter("expected comma-separated batch sizes, e.g. 1,8") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter("batch sizes must be positive")
    return tuple(dict.fromkeys(sizes))  # each once: `1,1` timed batch size 1 twice and kept one result


@app.command()
def bench(
    images: Path = typer.Option(..., "--images", **PATH, help="folder of images to compress (e.g. kodak-dev)"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", **PATH,
                                         help="bundle directory; default: the model compress uses without -m"),
    quality: Optional[int] = typer.Option(None, "--quality", "-q", help="shipped model quality instead of -m (see "
                                          "`aectl models`)"),
    provider: str = typer.Option("cpu", help="cpu, cuda or all (every provider that works here, TensorRT "
                                 "included)"),
    threads: int = typer.Option(2, help="intra-op threads for onnxruntime, torch and the matmul peak, 1 up to 4 "
                                "per CPU of the machine"),
    repeats: int = typer.Option(3, help="timed passes over all images; the median pass is reported"),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes", help="comma-separated images per call"),
    torch: bool = typer.Option(True, "--torch/--no-torch", help="also torch eager, when torch is installed"),
    peak: bool = typer.Option(True, "--peak/--no-peak", help="measure the matmul peak (4 s or more) for the MAC "
                              "rates' share of it"),
    baselines: str = typer.Option("jpeg,webp", help="Pillow codecs at the same bpp: jpeg, webp (comma-separated; "
                                  "'' for none)"),
    limit: Optional[int] = typer.Option(None, help="use only the first N images"),
    json_out: bool = typer.Option(False, "--json", help="print the full results as JSON"),
    save: Optional[Path] = typer.Option(None, **PATH, help="also write the JSON results to this file"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing --save file"),
) -> None:
    """Throughput of compress/decompress: onnxruntime vs torch eager vs JPEG/WebP, time split, % of matmul peak."""
    from aectl.cli.batch import refuse_model_and_quality
    from aectl.cli.json_out import json_text
    from aectl.cli.show import show_bench
    from aectl.perf.bench import BenchConfig, run_bench
    from aectl.runtime.outputs import atomic_write
    from aectl.runtime.registry import shipped_bundle

    refuse_model_and_quality(model, quality)
    if model is None:  # the model `aectl compress` uses without -m (it raises the same error when none ships)
        model = shipped_bundle(quality)
    if save is not None and save.is_dir():
        raise AectlError(f"--save {save} is a folder; give a file name")
    if save is not None and os.path.lexists(save) and not force:  # checked before minutes of measuring
        raise exists_error(save)
    if save is not None:
        check_writable_folder(save.parent)
    if json_out or save is None:
        _needs_stdout("--json's output" if json_out else "the table",
                      "" if save else "; give --save FILE to keep the results")

    cfg = BenchConfig(bundle=str(model), images=str(images), provider=provider, threads=threads, repeats=repeats,
                      batch_sizes=_batch_sizes(batch_sizes), torch=torch, peak=peak,
                      baselines=tuple(b for b in baselines.split(",") if b), limit=limit)
    result = run_bench(cfg, log=lambda msg: typer.echo(msg, err=True))
    if save is not None:
        atomic_write(save, (json_text(result) + "\n").encode(), force=force)  # a text file, as --json prints
    if json_out:
        print(json_text(result))
    else:
        show_bench(result)


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="print JSON, with each bundle's path")) -> None:
    """The models shipped with aectl, with their rate and quality on kodak-dev."""
    from aectl.cli.show import show_models

    _needs_stdout("the list of models")
    show_models(json_out)


@app.command("eval")
def evaluate(
    model: Optional[list[Path]] = typer.Option(None, "--model", "-m", **PATH, help="bundle (repeat for a curve); "
                                               "default: every shipped model"),
    quality: Optional[list[int]] = typer.Option(None, "--quality", "-q", metavar="<int>", help="shipped model "
                                                "quality (repeat; with -m too: compared together)"),
    data: Path = typer.Option(..., **PATH, help="folder of evaluation images (e.g. Kodak)"),
    baselines: str = typer.Option("jpeg,webp,avif", help="comma-separated: jpeg, webp, avif (through Pillow)"),
    out: Path = typer.Option(..., "--out", "-o", **PATH,
                             help="folder for results.json, per_image.csv, curves.csv, rd.png"),
    provider: str = typer.Option("cpu", help="onnxruntime provider for the models: cpu, cuda, tensorrt or auto"),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    force: bool = typer.Option(False, "--force", help="overwrite existing results in --out"),
    json_out: bool = typer.Option(False, "--json", help="print the summary (curves, BD-rates) as JSON"),
) -> None:
    """Rate-distortion evaluation: bpp, PSNR, MS-SSIM per image, BD-rates against JPEG/WebP/AVIF, and an RD plot."""
    from aectl.cli.show import show_eval
    from aectl.runtime.registry import shipped_bundle

    model = [*(model or []), *(shipped_bundle(q) for q in quality or [])] or None
    if json_out:
        _needs_stdout("--json's summary")
    show_eval(model, data, [b.strip() for b in baselines.split(",") if b.strip()], out, provider, threads, force,
              json_out)


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="print the report as JSON (exit status as without)")
           ) -> None:
    """Versions, installed onnxruntime distributions, and which providers really work here."""
    from aectl.cli.show import show_doctor

    _needs_stdout("what doctor finds")
    problem = show_doctor(json_out)
    if problem:  # after the table: a script that checks an install reads the exit status
        raise AectlError(problem)


def _die(message: str, code: int = 1) -> None:
    """Exactly one line on stderr, however long or multi-line the underlying message is."""
    try:
        # One write, so one system call: print() writes the line and its newline apart, and the ranks of a
        # torchrun, which share one stderr pipe, interleaved two error lines into one (1 run in 4).
        sys.stderr.write(f"error: {one_line(message, limit=500)}\n")
        sys.stderr.flush()
    except OSError:  # stderr is gone (the terminal hung up: EIO): the exit status still says it
        pass
    sys.exit(code)


def _on_stop_signal(signum, frame) -> None:
    """SIGTERM and SIGHUP are raised like Ctrl-C, so partial outputs are removed on the way out (a closed terminal
    or a dropped ssh session left temporary files behind)."""
    received_signals.append(signum)
    raise KeyboardInterrupt


def _names_as_given(exc: UnicodeError):
    """Undecodable bytes of a file name (held as surrogates) are written back as those bytes, as ls writes them;
    any other character the stream cannot encode becomes an escape. With stdout in strict UTF-8 (most terminals)
    such a name was an internal error (UnicodeEncodeError), and stopped the batch."""
    if isinstance(exc, UnicodeEncodeError) and all("\udc80" <= c <= "\udcff" for c in exc.object[exc.start:exc.end]):
        return codecs.lookup_error("surrogateescape")(exc)
    return codecs.backslashreplace_errors(exc)


def _print_any_name() -> None:
    """stdout and stderr print any file name (see _names_as_given) where they would fail on one."""
    codecs.register_error("aectl-names", _names_as_given)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="aectl-names")


def main() -> None:
    """Console entry point: user errors become one `error:` line, never a traceback."""
    _print_any_name()
    signal.signal(signal.SIGTERM, _on_stop_signal)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup it stays ignored
        signal.signal(signal.SIGHUP, _on_stop_signal)
    # Pillow's DecompressionBombWarning: --max-pixels is the guard here, and the warning's two lines broke the
    # one-line-per-problem output. (By message, so that PIL is not imported before a command needs it.)
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # Pillow's notices about EXIF it could not parse (two lines each): aectl reads such EXIF as no orientation.
    warnings.filterwarnings("ignore", message=r"(Corrupt|Possibly corrupt) EXIF|Metadata Warning")
    try:
        with command_line():  # messages name --threads, -m, --force: the options this caller has
            code = app(standalone_mode=False)
    except AectlError as exc:
        _die(str(exc))
    except ModuleNotFoundError as exc:  # train, export, verify need torch; the runtime does not
        message = missing_extra(exc)
        if message is None:
            _internal_error(exc)
        _die(message)
    except BrokenPipeError:  # the reader of stdout left (`aectl compress x.png -o - | head -c 8`): quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(1)
    except OSError as exc:  # "[Errno 17] File exists: 'f.txt'" reads better as "f.txt: File exists"
        if received_signals:  # the terminal hung up, and writing to it failed (EIO) on the way out
            _stopped()
        _die(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
    except (KeyboardInterrupt, typer.Abort):
        _stopped()
    except typer.exceptions.TyperException as exc:  # usage errors: bad option, missing argument
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if not message:  # `aectl` or `aectl bundle` alone: the help was printed, no error line to add
            sys.exit(getattr(exc, "exit_code", 2))
        _die(message, getattr(exc, "exit_code", 2))
    except Exception as exc:
        _internal_error(exc)
    if received_signals or code == 130:  # typer turns KeyboardInterrupt into exit code 130 on its own
        _stopped()
    sys.exit(code or 0)


def _internal_error(exc: Exception) -> None:
    """A bug: still one line, the traceback on request."""
    if os.environ.get("AECTL_DEBUG"):
        raise exc
    _die(f"internal error: {type(exc).__name__}: {exc} (set AECTL_DEBUG=1 for the traceback)")


STOP_MESSAGES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


def _stopped() -> None:
    """The shell's exit status for the first signal received: 128 + its number."""
    first = next((sig for sig in received_signals if sig in STOP_MESSAGES), signal.SIGINT)
    for sig in STOP_MESSAGES:  # a second Ctrl-C (or the one recipes passes on) while exiting: no traceback
        signal.signal(sig, signal.SIG_IGN)
    _die(STOP_MESSAGES[first], 128 + first)


if __name__ == "__main__":
    main()
