"""ICC profiles for the colour-management tests, built here because none but sRGB ships with Pillow or this
machine (ICC.1:2001-04, version 2): an RGB display profile of three primaries and a power-law curve (the
matrix/TRC model, as Apple's Display P3 profile is, with gamma 2.2 for the sRGB curve), a gray profile of a
power-law curve, and a CMYK printer profile whose 8-bit table maps each ink corner to the colour it has
under Pillow's plain conversion."""
import struct

# Display P3 primaries, Bradford-adapted to the D50 connection space (the rXYZ/gXYZ/bXYZ tags of Apple's
# Display P3 profile); they sum to D50.
DISPLAY_P3_D50 = ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))
D50 = (0.9642, 1.0, 0.8249)


def _s15f16(values) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _xyz(values) -> bytes:
    return b"XYZ " + bytes(4) + _s15f16(values)


def _description(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + bytes(67))


def _curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))


def rgb_profile(description: str = "Display P3 (aectl test, gamma 2.2)", primaries=DISPLAY_P3_D50,
                gamma: float = 2.2) -> bytes:
    tags = [(b"rXYZ", _xyz(primaries[0])), (b"gXYZ", _xyz(primaries[1])), (b"bXYZ", _xyz(primaries[2])),
            (b"rTRC", _curve(gamma)), (b"gTRC", _curve(gamma)), (b"bTRC", _curve(gamma))]
    return _profile(b"mntr", b"RGB ", b"XYZ ", description, tags)


def gray_profile(description: str = "Gray gamma 1.0 (aectl test)", gamma: float = 1.0) -> bytes:
    return _profile(b"mntr", b"GRAY", b"XYZ ", description, [(b"kTRC", _curve(gamma))])


def cmyk_profile(corners_lab, description: str = "CMYK (aectl test)") -> bytes:
    """`corners_lab`: the Lab colour of each of the 16 ink corners, C slowest, K fastest."""
    table = bytes(range(256))
    clut = b"".join(bytes([round(l * 255 / 100), round(a + 128), round(b + 128)]) for l, a, b in corners_lab)
    a2b0 = (b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + _s15f16((1, 0, 0, 0, 1, 0, 0, 0, 1))
            + table * 4 + clut + table * 3)
    return _profile(b"prtr", b"CMYK", b"Lab ", description, [(b"A2B0", a2b0)])


def _profile(device_class: bytes, space: bytes, pcs: bytes, description: str, own_tags) -> bytes:
    tags = [(b"desc", _description(description)), (b"wtpt", _xyz(D50)), *own_tags,
            (b"cprt", b"text" + bytes(4) + b"No copyright, use freely\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = [], b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)  # tag data starts on 4-byte boundaries
        table.append(signature + struct.pack(">II", offset + len(data), len(body)))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + device_class + space + pcs
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + bytes(4 + 4 + 4 + 4 + 8) + struct.pack(">I", 0)
              + _s15f16(D50) + bytes(4) + bytes(44))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(table) + data
