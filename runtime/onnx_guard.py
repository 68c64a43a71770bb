"""Refuse ONNX files whose tensors live outside the file (external data), without the onnx package.

Bundles are self-contained by construction; a hostile one could point a tensor's external data at any path
(`../../etc/passwd`, a device, a huge file). We walk the protobuf wire format of the model and reject any
TensorProto with data_location = EXTERNAL or external_data entries, wherever it sits: graph initializers,
sparse initializers, Constant/attribute tensors, subgraphs and functions. Sessions are then created from the
verified bytes, so the file cannot change between the check and the load.
"""
from __future__ import annotations

from aectl.runtime.errors import AectlError

# Field numbers from onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, ...).
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto: initialization, algorithm
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTE = 5
_FUNCTION_NODE, _FUNCTION_ATTRIBUTE_PROTO = 7, 11  # the second: a function's attributes' default values
ORT_FORMAT_ID = b"ORTM"  # a flatbuffer's file identifier, bytes 4-8: onnxruntime's own format, no ONNX protobuf
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
MAX_DEPTH = 64


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise AectlError("malformed ONNX file (bad varint)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) for each field: ints for varints, memoryviews for bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        if key >= 1 << 32 or key >> 3 == 0:  # protobuf keeps a tag's low 32 bits: field 7 written with bit 32 set
            raise AectlError("malformed ONNX file (field tag)")  # walked as a field we skip, loaded as the graph
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise AectlError("malformed ONNX file (field runs past the end)")
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise AectlError(f"malformed ONNX file (wire type {wire})")
        if pos > len(buf):
            raise AectlError("malformed ONNX file (truncated)")
        yield field, wire, value


def _check_tensor(buf: memoryview) -> None:
    for field, wire, value in _fields(buf):
        if field == _TENSOR_EXTERNAL_DATA or (field == _TENSOR_DATA_LOCATION and wire == 0 and value == 1):
            raise AectlError("ONNX file stores tensors as external data (outside the file); bundles must be "
                             "self-contained")


def _check_sparse(buf: memoryview) -> None:
    for field, wire, value in _fields(buf):
        if wire == 2 and field in (_SPARSE_VALUES, _SPARSE_INDICES):
            _check_tensor(value)


def _check_attribute(buf: memoryview, depth: int) -> None:
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field in (_ATTR_T, _ATTR_TENSORS):
            _check_tensor(value)
        elif field in (_ATTR_G, _ATTR_GRAPHS):
            _check_graph(value, depth + 1)
        elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
            _check_sparse(value)


def _check_node(buf: memoryview, depth: int) -> None:
    for field, wire, value in _fields(buf):
        if wire == 2 and field == _NODE_ATTRIBUTE:
            _check_attribute(value, depth)


def _check_graph(buf: memoryview, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise AectlError("malformed ONNX file (subgraphs nested too deeply)")
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field == _GRAPH_INITIALIZER:
            _check_tensor(value)
        elif field == _GRAPH_SPARSE:
            _check_sparse(value)
        elif field == _GRAPH_NODE:
            _check_node(value, depth)


def is_ort_format(model: bytes) -> bool:
    """Whether onnxruntime reads these bytes as its ORT format (by their file identifier, as onnxruntime does),
    whose tensors name no file; anything else it parses as an ONNX protobuf, whatever the file is called."""
    return model[4:8] == ORT_FORMAT_ID


def check_self_contained(model: bytes) -> None:
    """Raise AectlError if the serialized ModelProto references external data anywhere: the graph and its
    subgraphs, local functions' nodes and their attributes' default values (onnxruntime loads external tensors
    from there too), training graphs."""
    buf = memoryview(model)
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field == _MODEL_GRAPH:
            _check_graph(value, 0)
        elif field == _MODEL_TRAINING_INFO:
            for tfield, twire, tvalue in _fields(value):
                if twire == 2 and tfield in _TRAINING_GRAPHS:
                    _check_graph(tvalue, 0)
        elif field == _MODEL_FUNCTIONS:
            for ffield, fwire, fvalue in _fields(value):
                if fwire == 2 and ffield == _FUNCTION_NODE:
                    _check_node(fvalue, 0)
                elif fwire == 2 and ffield == _FUNCTION_ATTRIBUTE_PROTO:
                    _check_attribute(fvalue, 0)
