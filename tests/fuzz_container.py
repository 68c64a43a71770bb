"""Coverage-guided fuzzing of the .aec parser and decoder with atheris (`make fuzz`; not part of pytest).

    python tests/fuzz_container.py BUNDLE [atheris/libFuzzer flags, e.g. -runs=20000 -max_total_time=120]

Inputs are mutated .aec files; half of them get their CRC repaired so the fuzzer reaches the header checks,
the entropy decoder and the network. Every input must end in an image or an AectlError: anything else
(another exception, a hang past libFuzzer's -timeout, memory past -rss_limit_mb) is a crash.
"""
import struct
import sys
import zlib

import atheris

with atheris.instrument_imports():
    from aectl.runtime import AectlError, Decoder, container

decoder = Decoder(sys.argv[1], provider="cpu", max_pixels=1 << 20)


def repair_crc(data: bytes) -> bytes:
    if len(data) < container.HEADER_SIZE + container.CRC_SIZE:
        return data
    body = data[:-container.CRC_SIZE]
    return body + struct.pack("<I", zlib.crc32(body))


def one_input(data: bytes) -> None:
    if data[:1] == b"\x01":
        data = repair_crc(data[1:])
    try:
        decoder.decompress(data)
    except AectlError:
        pass


if __name__ == "__main__":
    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()
