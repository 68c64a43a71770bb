"""Performance measurement: `aectl bench` (bench.py), MAC counts from ONNX graphs (macs.py) and the machine's
measured matmul peak (peak.py). Uses the runtime as users run it; torch only through aectl.train.torch_ref."""
