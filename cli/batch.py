"""compress/decompress over many files: progress bar, per-file summary or JSON, exit status 1 if any failed."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from pathlib import Path

import typer

from aectl.cli.json_out import json_text
from aectl.runtime import container, files
from aectl.runtime.errors import AectlError, one_line


@contextlib.contextmanager
def _progress(total: int, label: str):
    """A rich progress bar on stderr for more than one file when stderr is a terminal; a no-op otherwise (a
    log or a pipe gets the summary lines only)."""
    from rich.console import Console

    console = Console(stderr=True)
    if total < 2 or not console.is_terminal:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def _report(results: list[files.Result], json_out: bool) -> int:
    failed = [r for r in results if not r.ok]
    if json_out:
        typer.echo(json_text({"files": [r.to_dict() for r in results], "ok": len(results) - len(failed),
                               "failed": len(failed)}))
    else:
        for r in failed:
            where = "" if r.error.startswith(r.source) else f"{r.source}: "
            typer.echo(f"error: {one_line(where + r.error)}", err=True)  # a file name may hold a newline
        if len(results) > 1:
            typer.echo(f"{len(results) - len(failed)} ok, {len(failed)} failed", err=True)
    return 1 if failed else 0


def _names_one_file(inputs, out, out_is_folder: bool = False) -> bool:
    """Whether -o may name the output file itself: one input file, and -o not a folder (an existing one, or one
    written with a trailing slash)."""
    return out is not None and len(inputs) == 1 and not files.is_folder(inputs[0]) and not out_is_folder and \
        not files.is_folder(out)


def stream_paths(inputs: list[str], out: str | None) -> tuple[list[Path], Path | None, bool]:
    """Command-line words as paths, the bare word - as the standard stream (files.STDIO), so that ./- still
    names a file called "-" (pathlib reads both as Path("-")); and whether -o ends in a slash, which names a
    folder as it does for cp and the shell (pathlib drops the slash: `-o out.png/` wrote a file out.png)."""
    def path(word: str) -> Path:
        return files.STDIO if word == "-" else Path(word)
    if "" in inputs:  # pathlib reads "" as ".": the working folder was walked
        raise AectlError('"": give a file or a folder (. for this one)')
    if out == "":  # and written into
        raise AectlError('-o "": give a file or a folder (. for this one)')
    out_is_folder = out is not None and out.endswith(os.sep)
    return [path(w) for w in inputs], None if out is None else path(out), out_is_folder


def _stdio_jobs(inputs, out, new_suffix: str, json_out: bool, out_is_folder: bool = False) -> list[files.Job] | None:
    """The one job of a pipe, for input - (standard input) or -o - (standard output), as gzip reads them; None
    when neither is used. Reading stdin without -o writes stdout."""
    reads = any(files.is_stdio(p) for p in inputs)
    if not reads and not files.is_stdio(out):
        return None
    if len(inputs) != 1:
        raise AectlError("- (standard input) must be the only input" if reads else
                         "-o - (standard output) takes one input file")
    if not reads and files.is_folder(inputs[0]):
        raise AectlError("-o - (standard output) takes one input file, not a folder")
    target = files.STDIO if out is None else out
    if reads and not files.is_stdio(target) and (out_is_folder or files.is_folder(target) or
                                                   target.suffix.lower() != new_suffix):
        raise AectlError(f"-o {target}: reading standard input, -o names the {new_suffix} file to write (or - for "
                         "standard output)")
    if files.is_stdio(target):
        if json_out:
            raise AectlError("--json prints on standard output, which -o - uses for the file: drop one"
                             if files.is_stdio(out) else "--json prints on standard output, where the file goes "
                             "when standard input is read without -o: give -o FILE")
        if sys.stdout is None:
            raise AectlError("standard output is closed: give -o FILE")
        if sys.stdout.isatty():
            raise AectlError("refusing to write binary data to a terminal: redirect standard output, or give -o FILE")
    return [files.Job(inputs[0], target)]


def read_stdin(check_head) -> bytes:
    """All of standard input; a terminal is refused rather than waited on, and `check_head` sees the first
    bytes before the rest is read (a wrong kind of stream fails at once, not after all of it is in memory).

    The stream is gathered in one growing buffer that is handed back without a copy: `head + read()` held
    it twice (1 GB piped in peaked at 2.0 GB)."""
    if sys.stdin is None:
        raise AectlError("standard input is closed: pipe or redirect a file into it")
    if sys.stdin.isatty():
        raise AectlError("standard input is a terminal: pipe or redirect a file into it")
    head = sys.stdin.buffer.read(len(container.MAGIC))
    if not head:
        raise AectlError("standard input is empty")
    check_head(head)
    gathered = io.BytesIO(head)
    gathered.seek(len(head))
    shutil.copyfileobj(sys.stdin.buffer, gathered, 1 << 20)
    return gathered.getvalue()  # the buffer itself, trimmed in place


def _pillow_format(suffix: str) -> str | None:
    from PIL import Image

    return Image.registered_extensions().get(suffix.lower())


def _image_suffix(suffix: str) -> bool:
    """Whether -o's suffix names an image file: one Pillow knows, or a photo format read through a plugin (HEIC
    without pillow-heif loaded: `-o out.heic` was a folder out.heic/ holding a PNG)."""
    return _pillow_format(suffix) is not None or suffix.lower() in files.IMAGE_SUFFIXES


def _writable_format(suffix: str, named_by: str) -> str:
    """Pillow's format for an output suffix, or one line on why it cannot be written."""
    from aectl.runtime.image_io import writer_refusal

    fmt = _pillow_format(suffix)
    if fmt is None:
        raise AectlError(f"{named_by}: Pillow cannot write that format")
    refusal = writer_refusal(fmt)
    if refusal:
        raise AectlError(f"{named_by}: {refusal}")
    return fmt


def _output_suffix(inputs, out, image_format: str | None, out_is_folder: bool = False) -> str:
    """The suffix decompress writes: for one input and -o naming an image file (out.jpg), that file in its
    suffix's format (it was a folder out.jpg/ holding a PNG), and --format, if given too, must agree with it;
    otherwise --format, by default PNG."""
    one_file = _names_one_file(inputs, out, out_is_folder) and _image_suffix(out.suffix)
    if image_format is None:
        if not one_file:
            return ".png"
        _writable_format(out.suffix, f"-o {out}")
        return out.suffix.lower()
    suffix = "." + image_format.lower().lstrip(".")
    fmt = _writable_format(suffix, f"--format {image_format}")
    if not one_file:
        return suffix
    if _writable_format(out.suffix, f"-o {out}") != fmt:
        raise AectlError(f"-o {out} names a {_pillow_format(out.suffix)} file but --format is {image_format}: "
                         "drop --format, or make them agree")
    return out.suffix.lower()


def _ratio(value: float) -> str:
    """One decimal from 1:1 up; two significant digits below it (a 1x1 image printed `ratio 0.0:1`)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _print_ok(json_out: bool, advance):
    def on_result(r: files.Result) -> None:
        advance()
        if r.ok and not json_out:
            extra = f"q{r.quality}, " if r.quality is not None else ""
            extra += f"{r.bpp:.3f} bpp, " if r.bpp is not None else ""
            extra += f"ratio {_ratio(r.ratio)}:1, " if r.ratio is not None else ""
            typer.echo(one_line(f"{r.source} -> {r.target} ({r.width}x{r.height}, {extra}{r.bytes} B)"),
                       err=r.target == "stdout")  # stdout holds the file itself
    return on_result


def refuse_model_and_quality(model, quality) -> None:
    """-m and -q both choose the model (compress, bench): one of them."""
    if model is not None and quality is not None:
        raise AectlError("give -m BUNDLE or -q QUALITY, not both")


def compress_files(inputs, model, out, provider, force, json_out, threads, max_pixels, fail_fast=False,
                   engine="local", workers=None, quality=None, max_bytes=None, max_bpp=None,
                   format_version=None, out_is_folder=False) -> int:
    from aectl.runtime.codec import Codec
    from aectl.runtime.registry import manifest_quality, shipped_bundle, shipped_qualities
    from aectl.runtime.providers import PROVIDER_NAMES, require_provider

    refuse_model_and_quality(model, quality)
    budget = max_bytes is not None or max_bpp is not None
    if budget and quality is not None:
        raise AectlError("--max-bytes/--max-bpp choose the quality themselves: drop -q")
    if budget and engine != "local":
        raise AectlError(f"--max-bytes/--max-bpp run on --engine local only, not {engine}")
    if budget:
        from aectl.runtime.rate_control import check_budget

        check_budget(max_bytes, max_bpp)
    if workers is not None and (engine != "ray" or workers < 1):
        raise AectlError("--workers takes a positive count, with --engine ray")
    chosen_by_user = model is not None
    if _names_one_file(inputs, out, out_is_folder) and _image_suffix(out.suffix):  # before any bundle is loaded
        raise AectlError(f"-o {out}: compress writes .aec files; name the output {out.stem}{files.AEC_SUFFIX} "
                         "or a folder")
    if engine == "ray":  # the workers may have a GPU the driver lacks: check only the name here
        if provider not in PROVIDER_NAMES:
            require_provider(provider)
    else:
        require_provider(provider)
    if model is None:
        model = shipped_bundle(quality)
    # With Ray the driver only checks the bundle and the files, on the CPU: the workers run the asked provider.
    codec = Codec(model, provider="cpu" if engine == "ray" else provider, threads=threads, max_pixels=max_pixels,
                  format_version=format_version)
    if not codec.bundle.has_encoder:
        raise AectlError(f"bundle {model} is decoder-only (no encoder.onnx) and cannot compress; use the full "
                         "bundle (the one it was stripped from, or an export without --decoder-only)")
    jobs = _stdio_jobs(inputs, out, files.AEC_SUFFIX, json_out, out_is_folder)
    if jobs and engine == "ray":
        raise AectlError("--engine ray reads and writes files: give paths, not -")
    jobs = jobs or files.plan_jobs(inputs, out, files.IMAGE_SUFFIXES, files.AEC_SUFFIX, out_is_folder)
    if not jobs:
        raise AectlError("no image files found in the given inputs")
    # Every file's report names the quality that made it, where the bundle has one (only a budget's choice was
    # named: `compress --json` with the default model did not say which quality it used).
    own_quality = manifest_quality(codec.bundle.manifest)
    if engine == "ray":
        from aectl.integrations.ray import compress_jobs

        results = []
        # Ray's driver prints a line of its own on stdout when a worker dies: on stderr here, so that --json's
        # stdout stays one JSON document.
        with _progress(len(jobs), "compress (ray)") as advance, \
                contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext():
            on_result = _print_ok(json_out, advance)
            for result in compress_jobs(jobs, model, force, workers=workers, provider=provider,
                                        format_version=format_version, max_pixels=max_pixels,
                                        threads=1 if threads is None else threads):
                if result.ok:
                    result.quality = own_quality
                results.append(result)
                on_result(result)
                if fail_fast and not result.ok:
                    break
        return _report(results, json_out)
    if engine != "local":
        raise AectlError(f"--engine must be local or ray, got {engine!r}")

    ladder = None
    if budget:
        from aectl.runtime.rate_control import QualityLadder

        levels = {own_quality or 0: model} if chosen_by_user else shipped_qualities()
        ladder = QualityLadder(levels, provider=provider, threads=threads, max_pixels=max_pixels,
                               format_version=format_version)
    else:
        codec.network.session("encoder")  # a broken bundle fails here once, not once per file

    def work(job):
        from aectl.runtime.container import parse

        source = _stdin_image(codec.max_pixels) if files.is_stdio(job.source) else job.source
        quality = own_quality
        if ladder:
            data, chosen = ladder.compress_within(source, max_bytes=max_bytes, max_bpp=max_bpp)
            quality = chosen or None  # 0: a bundle of the user's without a quality (its ladder's one rung)
        else:
            data = codec.compress(source)
        header = parse(data, max_pixels)[0]
        info = files.compress_info(data, header.width, header.height, header.channels, header.bit_depth)
        return data, info | {"quality": quality}

    with _progress(len(jobs), "compress") as advance:
        results = files.run_jobs(jobs, work, force, on_result=_print_ok(json_out, advance), fail_fast=fail_fast,
                                 check_source=files.refuse_aec)
    return _report(results, json_out)


def _stdin_image(max_pixels: int):
    import io

    from aectl.runtime.image_io import open_image

    def not_aec(head: bytes) -> None:
        if head == container.MAGIC:
            raise AectlError("already an .aec file (decompress it first)")
    return open_image(io.BytesIO(read_stdin(not_aec)), max_pixels, name="stdin")


def decompress_files(inputs, out, model, provider, image_format, force, json_out, threads, max_pixels,
                     fail_fast=False, png_compression=None, out_is_folder=False) -> int:
    from aectl.runtime.codec import Codec, check_max_pixels
    from aectl.runtime.container import parse
    from aectl.runtime.image_io import PNG_COMPRESSION, encode_image, write_image
    from aectl.runtime.providers import check_threads, require_provider
    from aectl.runtime.registry import find_bundle

    require_provider(provider)
    check_max_pixels(max_pixels)
    check_threads(threads)  # without -m each file's model is opened as it comes: it was said once per file
    if png_compression is not None and not 0 <= png_compression <= 9:
        raise AectlError(f"--png-compression {png_compression}: give a zlib level from 0 to 9")
    suffix = _output_suffix(inputs, out, image_format, out_is_folder)
    if png_compression is not None and _pillow_format(suffix) != "PNG":  # it would change nothing
        raise AectlError(f"--png-compression sets PNG outputs' zlib level; these outputs are {_pillow_format(suffix)}")
    png_compression = PNG_COMPRESSION if png_compression is None else png_compression
    jobs = _stdio_jobs(inputs, out, suffix, json_out, out_is_folder) or \
        files.plan_jobs(inputs, out, {files.AEC_SUFFIX}, suffix, out_is_folder)
    if not jobs:
        raise AectlError("no .aec files found in the given inputs")
    codecs: dict[str, Codec] = {}
    fixed = Codec(model, provider=provider, threads=threads, max_pixels=max_pixels) if model else None
    if fixed is not None:
        fixed.network.session("decoder")  # a broken bundle fails here once, not once per file

    def work(job):
        try:
            data = read_stdin(container.check_magic) if files.is_stdio(job.source) else files.read_aec(job.source)
        except OSError as exc:
            raise AectlError(exc.strerror) from None
        header = parse(data, max_pixels)[0]
        codec = fixed
        if codec is None:
            if header.model_id not in codecs:
                codecs[header.model_id] = Codec(find_bundle(header.model_id), provider=provider, threads=threads,
                                                max_pixels=max_pixels)
            codec = codecs[header.model_id]
        image = codec.decompress(data)
        return image, {"bytes": len(data), "width": header.width, "height": header.height,
                       "bpp": 8 * len(data) / (header.width * header.height)}

    save_options = {"compress_level": png_compression} if _pillow_format(suffix) == "PNG" else None

    def write(job, image):
        if files.is_stdio(job.target):
            files.write_stdout(encode_image(image, suffix, save_options))
        else:
            write_image(job.target, image, force=force, save_options=save_options)

    with _progress(len(jobs), "decompress") as advance:
        results = files.run_jobs(jobs, work, force, write=write, on_result=_print_ok(json_out, advance),
                                 fail_fast=fail_fast, check_source=files.require_aec)
    return _report(results, json_out)
