"""Reading and writing `.safetensors` checkpoints tensor by tensor, with numpy only.

The format is an 8-byte header length, a JSON header (dtype, shape and byte range of every
tensor) and the raw little-endian data. Tensors are read in blocks of rows (`read_rows`) with
`np.fromfile` at their offset, so a loader can fill a variable's buffer block by block, transposing
or concatenating on the way, without a second whole copy of the tensor. numpy has no bfloat16,
so those are read as uint16 and widened to float32 (bfloat16 is the top half of a float32).
`safetensors.safe_open(framework="np")` would need numpy to know bfloat16; files written here are
read back by keras-hub (through `safe_open`) in the tests.
"""

import json
import struct
from pathlib import Path

import numpy as np

from kerasllm.errors import DataError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_header(path):
    """The JSON header of a safetensors file: key -> {dtype, shape, data_offsets}.

    Raises:
        DataError: the file is not safetensors or is shorter than its header says (truncated).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DataError(f"{path}: not a safetensors file (only {size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise DataError(f"{path}: truncated or not a safetensors file (header of {length} bytes, file of {size})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(f"{path}: not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + length + end > size:
        raise DataError(f"{path}: truncated: the tensors need {8 + length + end} bytes, the file has {size}")
    for key, entry in header.items():
        if entry["dtype"] not in _DTYPES:
            raise DataError(f"{path}: tensor {key} has dtype {entry['dtype']}; expected one of {', '.join(_DTYPES)}")
    return header, 8 + length


class SafetensorsCheckpoint:
    """The tensors of a Hugging Face checkpoint folder (one file or an index of shards).

    Keys are given without the `model.` / `transformer.` prefix some exports add, so
    `"h.0.ln_1.weight"` finds `"transformer.h.0.ln_1.weight"` too.

    Args:
        directory: folder holding `model.safetensors` or `model.safetensors.index.json`.

    Examples:

    >>> import tempfile, numpy as np
    >>> from safetensors.numpy import save_file
    >>> folder = tempfile.mkdtemp()
    >>> save_file({"model.norm.weight": np.ones(3, np.float32)}, f"{folder}/model.safetensors")
    >>> SafetensorsCheckpoint(folder).get("norm.weight").tolist()
    [1.0, 1.0, 1.0]
    """

    PREFIXES = ("model.", "transformer.")

    def __init__(self, directory):
        self.directory = Path(directory)
        self._files = {}  # full key -> file path
        index = self.directory / INDEX_FILE
        if (self.directory / SINGLE_FILE).is_file():
            files = [self.directory / SINGLE_FILE]
            for key in read_header(files[0])[0]:
                self._files[key] = files[0]
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise DataError(f"{index}: expected JSON with a 'weight_map' of tensor -> file") from None
            for name in sorted(set(weight_map.values())):
                if not (self.directory / name).is_file():
                    raise DataError(f"{index}: shard {name} is missing from {self.directory}")
                read_header(self.directory / name)
            self._files = {key: self.directory / name for key, name in weight_map.items()}
        else:
            raise DataError(f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE}")
        self._short = {self._strip(key): key for key in self._files}
        self._headers = {}

    def _strip(self, key):
        for prefix in self.PREFIXES:
            if key.startswith(prefix):
                return key[len(prefix):]
        return key

    def keys(self):
        """The keys, without prefix."""
        return list(self._short)

    def __contains__(self, key):
        return key in self._short

    def file_of(self, key):
        return self._files[self._short[key]]

    def shape(self, key):
        return tuple(self._entry(key)["shape"])

    def dtype(self, key):
        return self._entry(key)["dtype"]

    def _entry(self, key):
        path = self.file_of(key)
        if path not in self._headers:
            self._headers[path] = read_header(path)
        return self._headers[path][0][self._short[key]]

    def get(self, key):
        """Tensor `key` as a numpy array (bfloat16 widened to float32)."""
        return self.read_rows(key)

    def read_rows(self, key, start=0, stop=None):
        """Rows `start:stop` (along the first axis) of tensor `key`, bfloat16 widened to float32.

        Read with `np.fromfile` at the rows' offset rather than through a memory map, so the
        file's pages do not add to the process's resident memory while the model fills.
        """
        if key not in self._short:
            raise DataError(f"{self.directory}: tensor {key} is missing from the checkpoint")
        path = self.file_of(key)
        entry = self._entry(key)
        shape = tuple(entry["shape"])
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        row = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        first = shape[0] if shape else 1
        start, stop, _ = slice(start, stop).indices(first)
        stop = max(start, stop)
        offset = self._headers[path][1] + entry["data_offsets"][0] + start * row * dtype.itemsize
        raw = np.fromfile(path, dtype=dtype, count=(stop - start) * row, offset=offset)
        if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            wide = raw.astype(np.uint32)
            del raw
            wide <<= 16
            raw = wide.view(np.float32)
        return raw.reshape((stop - start,) + shape[1:] if shape else ())

    def release(self, key):
        """Nothing to free: tensors stay on disk until read."""


def to_bfloat16_bits(array):
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def write_safetensors(tensors, path, dtype="float32"):
    """Writes `{key: array}` as one safetensors file, float tensors as `dtype`.

    Args:
        tensors: dict of numpy arrays.
        path: the output file.
        dtype: "float32", "float16" or "bfloat16" for the floating-point tensors.
    """
    header, chunks, offset = {}, [], 0
    for key in sorted(tensors):
        array = np.asarray(tensors[key])
        if array.dtype.kind == "f":
            if dtype == "bfloat16":
                array, name = to_bfloat16_bits(array), "BF16"
            else:
                array = array.astype(dtype)
                name = {"float32": "F32", "float16": "F16"}[dtype]
        else:
            name = {v: k for k, v in _DTYPES.items() if k != "BF16"}[array.dtype.type]
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[key] = {"dtype": name, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # tensors start 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for data in chunks:
            f.write(data)
