#!/usr/bin/env bash
# The GPU check of issues #5 and #7, for a session that is lent a GPU machine (the device tool). Not yet run:
# no session so far had a GPU. Three modes:
#
#   bash benchmarks/gpu_check.sh prepare   HERE, once: downloads the cp312 wheels the GPU machine lacks
#                                          (onnxruntime-gpu, a CUDA 13 build; constriction) and copies
#                                          kodak-dev, into ignored folders .gpu/base and .gpu/part-N, each
#                                          small enough to carry with the working tree (64 MiB a call).
#   bash benchmarks/gpu_check.sh stage     THERE, one call per folder, carry [".gpu/base"], then
#                                          [".gpu/part-2"], ...: copies the carried files to /tmp/aectl-gpu,
#                                          which survives between calls while the machine stays warm (30 s).
#   (AECTL_GPU_LOCAL=1 bash benchmarks/gpu_check.sh run   here, without a GPU: the same steps with the
#    environment's own onnxruntime and nothing installed, to check the script itself; the GPU tests skip.)
#   bash benchmarks/gpu_check.sh run       THERE, last call (carry the last part with it): stages, joins the
#                                          wheel parts, installs with --no-deps into /tmp/site, loads CUDA
#                                          and cuDNN from the torch installation (onnxruntime.preload_dlls),
#                                          runs doctor, the CUDA tests, the cross-provider measurements, the
#                                          IOBinding probe and `aectl bench --provider all` on kodak-dev. Logs
#                                          and JSON in $OUT/gpu-check.tgz.
#
# The calls must follow each other within the machine's warm period; if the machine went back in between,
# /tmp/aectl-gpu is gone and `run` says which parts are missing.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"  # no default: a bare call would start a run of several minutes
ORT_GPU="${ORT_GPU:-onnxruntime-gpu==1.31.1}"
CONSTRICTION="${CONSTRICTION:-constriction==0.5.0}"
PART_MIB="${PART_MIB:-45}"  # + the working tree (about 14 MiB with kodak-dev) < 64 MiB
STAGE=/tmp/aectl-gpu
SITE=/tmp/site
PY="${PYTHON:-python3}"
OUT="${OUT:-$PWD/out/gpu-check}"

prepare() {
    set -e
    rm -rf .gpu && mkdir -p .gpu/wheels .gpu/base/data
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .gpu/wheels "$ORT_GPU" "$CONSTRICTION"
    cp -r "${AECTL_TEST_DATA:-../shared/data}/kodak-dev" .gpu/base/data/
    local n=1
    for whl in .gpu/wheels/*.whl; do
        if [ "$(stat -c %s "$whl")" -le $((PART_MIB * 1024 * 1024)) ]; then
            cp "$whl" .gpu/base/
            continue
        fi
        split -b "${PART_MIB}M" -d -a 2 "$whl" ".gpu/wheels/$(basename "$whl").part-"
        sha256sum "$whl" | awk '{print $1}' > ".gpu/base/$(basename "$whl").sha256"
        for part in ".gpu/wheels/$(basename "$whl")".part-*; do
            n=$((n + 1)); mkdir -p ".gpu/part-$n"; mv "$part" ".gpu/part-$n/"
        done
    done
    rm -rf .gpu/wheels
    du -sh .gpu/* | sed 's/^/prepared: /'
    echo "carry .gpu/base with 'stage', then each .gpu/part-N with 'stage' (the last one with 'run')"
}

stage() {
    mkdir -p "$STAGE"
    for dir in .gpu/base .gpu/part-*; do
        [ -d "$dir" ] && cp -r "$dir"/. "$STAGE"/
    done
    ls -la "$STAGE" | sed 's/^/staged: /'
}

install() {
    set -e
    [ -n "${AECTL_GPU_LOCAL:-}" ] || install_wheels
    # aectl from this checkout, importable as a package and as a console script.
    mkdir -p /tmp/pkg /tmp/bin
    ln -sfn "$PWD" /tmp/pkg/aectl
    printf '#!/bin/sh\nexec %s -m aectl.cli.main "$@"\n' "$(command -v "$PY")" > /tmp/bin/aectl
    chmod +x /tmp/bin/aectl
    export PYTHONPATH="$SITE:/tmp/pkg" PATH="/tmp/bin:$PATH" PYTHONUNBUFFERED=1
    # The image's CPU onnxruntime stays installed beside the carried onnxruntime-gpu (which shadows it from
    # /tmp/site); aectl rightly warns about two distributions, which is expected here.
    export PYTHONWARNINGS="ignore:both onnxruntime and onnxruntime-gpu:RuntimeWarning"
    if [ -n "${AECTL_GPU_LOCAL:-}" ]; then
        export AECTL_TEST_DATA="$(realpath "${AECTL_TEST_DATA:-../shared/data}")"
    else
        export AECTL_TEST_DATA="$STAGE/data"
    fi
    export XDG_CACHE_HOME=/tmp/aectl-cache
    set +e
}

install_wheels() {
    for sum in "$STAGE"/*.whl.sha256; do
        [ -e "$sum" ] || continue
        local whl="${sum%.sha256}"
        cat "$whl".part-* > "$whl"
        if [ "$(sha256sum "$whl" | awk '{print $1}')" != "$(cat "$sum")" ]; then
            echo "error: $(basename "$whl") does not match its sha256: a part is missing (staged: $(ls "$STAGE" | tr '\n' ' '))"
            exit 1
        fi
    done
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$STAGE"/*.whl
    # The CUDA 13 and cuDNN libraries of the torch installation: where preload_dlls() looks (next to the
    # onnxruntime package, under nvidia/) and, as a fallback for the dynamic loader, LD_LIBRARY_PATH.
    local torch_site
    torch_site="$("$PY" -c 'import pathlib, torch; print(pathlib.Path(torch.__file__).parents[1])')"
    [ -e "$SITE/nvidia" ] || ln -s "$torch_site/nvidia" "$SITE/nvidia"
    LD_LIBRARY_PATH="$(ls -d "$torch_site"/nvidia/*/lib 2>/dev/null | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
    # Every Python process (pytest and the aectl subprocesses it starts) preloads the CUDA libraries.
    cat > "$SITE/sitecustomize.py" <<'EOF'
import contextlib, sys
try:
    import onnxruntime
    with contextlib.redirect_stdout(sys.stderr):  # its messages must not mix with --json on stdout
        onnxruntime.preload_dlls()
except Exception as exc:
    print(f"sitecustomize: onnxruntime.preload_dlls() failed: {exc}", file=sys.stderr)
EOF
}

run() {
    stage
    mkdir -p "$OUT"
    install > >(tee "$OUT/install.log") 2>&1  # in this shell (for its exports); exits on failure
    local status=0
    {
        echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) on $(hostname)"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
        "$PY" -c 'import onnxruntime as o, torch; print("onnxruntime", o.__version__, o.__file__); print("providers", o.get_available_providers()); print("torch", torch.__version__, torch.version.cuda)'
        aectl doctor
    } 2>&1 | tee "$OUT/doctor.log"
    "$PY" -m pytest -rs -v -p no:cacheprovider tests/test_cuda.py tests/test_iobinding.py \
        "tests/test_cli.py::test_doctor_probes_gpu_providers" 2>&1 | tee "$OUT/pytest.log" || status=1
    for provider in cuda tensorrt; do
        "$PY" benchmarks/cross_provider.py --a "$provider" --b cpu --data "$AECTL_TEST_DATA/kodak-dev" --json "$OUT/cross-$provider-cpu.json" \
            2>&1 | tee "$OUT/cross-$provider-cpu.log"
    done
    # IOBinding (what aectl runs) against plain session.run, and with the output kept on the GPU.
    for batch in 1 8; do  # batch 8 of 768x512 is one run on a GPU (runtime/network.py GPU_RUN_PIXELS)
        "$PY" benchmarks/iobinding_probe.py --provider cuda --batch "$batch" \
            --image "$AECTL_TEST_DATA/kodak-dev/kodim01.png" --json "$OUT/iobinding-cuda-b$batch.json" \
            2>&1 | tee "$OUT/iobinding-cuda-b$batch.log"
    done
    # Every provider that works there, on kodak-dev, as benchmarks/README.md's CPU runs (2 threads).
    aectl bench --images "$AECTL_TEST_DATA/kodak-dev" --provider all --threads 2 --repeats 5 \
        --save "$OUT/bench-all.json" --force 2>&1 | tee "$OUT/bench.log"
    # One archive: the device tool brings back at most 8 files from $OUT.
    (cd "$OUT" && tar -czf gpu-check.tgz --remove-files -- *.log *.json)
    echo "gpu_check: pytest $([ $status = 0 ] && echo passed || echo FAILED); logs in $OUT/gpu-check.tgz"
    return $status
}

case "$MODE" in
    prepare) prepare ;;
    stage) stage ;;
    run) run ;;
    *) echo "usage: $0 prepare|stage|run" >&2; exit 2 ;;
esac
