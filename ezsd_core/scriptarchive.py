"""Read the tensors of a TorchScript archive (OpenAI's ``ViT-B-32.pt``) without running any of its code.

Role: OpenAI ships CLIP as a TorchScript archive: a zip holding ``<name>/data.pkl`` (the pickled
module tree), ``<name>/data/<key>`` (raw tensor storages) and ``<name>/code/`` (TorchScript source).
``torch.jit.load`` compiles and runs that code, and ``torch.load(weights_only=True)`` refuses the
archive, so this module unpickles ``data.pkl`` with a restricted unpickler instead: module objects
become plain attribute holders, tensors are rebuilt from their storages by torch's own
``_rebuild_tensor_v2``, typed lists and dicts (``torch.jit._pickle``'s builders) are plain data,
and any other global (a function, a class outside that short list) is an
error. The ``code/`` entries are never read.
Layer 1: torch, standard library.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor

# the storage classes a pickled tensor may name, and the dtype each one means
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


# TorchScript's pickler wraps typed list / dict attributes in these; each only returns its data
_BUILDERS = {"build_intlist": lambda x: list(x), "build_doublelist": lambda x: list(x),
             "build_boollist": lambda x: list(x), "build_tensorlist": lambda x: list(x),
             "restore_type_tag": lambda value, _type: value}


class ScriptObject:
    """A pickled TorchScript module (``__torch__.*`` class): only its attributes, no behaviour."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Unpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return torch._utils._rebuild_tensor_v2
        if module == "torch.jit._pickle" and name in _BUILDERS:
            return _BUILDERS[name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{self.path}: the archive's data.pkl names {module}.{name}, which is not a "
                                     f"module or tensor (refused: reading it could run code)")

    def persistent_load(self, pid: tuple) -> torch.storage.TypedStorage:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self.path}: unexpected persistent id {pid!r} in data.pkl")
        raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        if len(raw) < numel * torch.empty((), dtype=storage_type.dtype).element_size():
            raise pickle.UnpicklingError(f"{self.path}: storage {key} is shorter than its {numel} elements")
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=storage_type.dtype, _internal=True)


def is_script_archive(path: Path | str) -> bool:
    """True when ``path`` is a zip with a TorchScript ``code/`` folder next to its ``data.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names)


def read_state_dict(path: Path | str) -> dict[str, Tensor]:
    """Every tensor attribute of the archive's module tree, by dotted state-dict name.

    The names are those of ``torch.jit.load(path).state_dict()`` plus any tensor attribute that is
    not a parameter or buffer (e.g. OpenAI's ``input_resolution``); the caller keeps what its model
    needs. Dtypes are as stored (OpenAI's weights are float16).

    Args:
        path: a TorchScript archive (``torch.jit.save`` output).

    Returns:
        name -> tensor (any shape), on the CPU.

    Raises:
        ValueError: not a TorchScript archive, a big-endian one, or a data.pkl naming anything but
            modules and tensors.
    """
    path = Path(path)
    if not is_script_archive(path):
        raise ValueError(f"{path}: not a TorchScript archive (a zip with data.pkl and code/)")
    with zipfile.ZipFile(path) as z:
        prefix = next(n for n in z.namelist() if n.endswith("/data.pkl"))[: -len("data.pkl")]
        order = z.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in z.namelist() else "little"
        if order != "little":
            raise ValueError(f"{path}: a {order}-endian archive; only little-endian ones are read")
        try:
            root = _Unpickler(z, prefix, path).load()
        except pickle.UnpicklingError as e:
            raise ValueError(str(e)) from None
    out: dict[str, Tensor] = {}
    _collect(root, "", out)
    return out


def _collect(obj: object, prefix: str, out: dict[str, Tensor]) -> None:
    for name, value in vars(obj).items():
        if isinstance(value, Tensor):
            out[prefix + name] = value
        elif isinstance(value, ScriptObject):
            _collect(value, f"{prefix}{name}.", out)
