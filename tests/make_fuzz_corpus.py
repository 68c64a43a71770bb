"""Seeds for `make fuzz`: a small real model trained for a few steps on the demo photos, and real .aec files
of a few sizes and modes made with it (out/corpus); and real files from the shipped factorized-q1 (classified
tables, peaked enough for group flags) for a second session (out/corpus-q1)."""
import sys
from pathlib import Path

from PIL import Image

from aectl.export.onnx_export import export_bundle
from aectl.runtime import Codec
from aectl.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
out = Path(sys.argv[1])
if not (out / "bundle").is_dir():
    train(TrainConfig(preset="seed-conv", data=str(ROOT / "examples" / "train-images"), out=str(out / "run"),
                      steps=20, batch_size=8, fit_steps=20, resume=True), progress=False, log=lambda *_: None)
    export_bundle(out / "run", out / "bundle", force=True, log=lambda *_: None)
codec = Codec(out / "bundle", provider="cpu")
corpus = out / "corpus"
corpus.mkdir(parents=True, exist_ok=True)
photo = Image.open(ROOT / "examples" / "images" / "kodim03.png")
for i, (w, h, mode) in enumerate([(1, 1, "RGB"), (17, 33, "L"), (40, 24, "RGBA"), (64, 48, "RGB")]):
    (corpus / f"seed{i}.aec").write_bytes(codec.compress(photo.crop((0, 0, w, h)).convert(mode)))
print(f"corpus: {len(list(corpus.iterdir()))} files in {corpus}")
shipped = Codec(ROOT / "models" / "factorized-q1", provider="cpu")
corpus_q1 = out / "corpus-q1"
corpus_q1.mkdir(parents=True, exist_ok=True)
for i, (w, h) in enumerate([(48, 32), (256, 192)]):  # 256 x 192: 192 positions, groups of 64+ carry flags
    (corpus_q1 / f"seed{i}.aec").write_bytes(shipped.compress(photo.crop((0, 0, w, h)).convert("RGB")))
print(f"corpus: {len(list(corpus_q1.iterdir()))} files in {corpus_q1}")
