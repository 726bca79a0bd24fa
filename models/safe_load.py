"""
Loading checkpoint files without running code from them.

`.pt` files are pickles, and unpickling can call any importable function. We load
them in three tiers:

1. `torch.load(weights_only=True)`: torch's own allow-list (tensors, containers,
   primitive types). Most files, ours included, load here.
2. If (1) rejects the file for an unknown global (the released VA-VAE training
   checkpoint carries hyper-parameter objects, for example), a restricted unpickler:
   torch's tensor-rebuild functions and plain containers are allowed, every other
   global becomes an inert placeholder that does nothing when called or built. Only
   the tensors survive (`strip_to_tensors`).
3. Only with an explicit opt-in (`trust=True`, the CLI flag `--trust_checkpoint`):
   a plain `torch.load(weights_only=False)`.

Every failure is a `CheckpointError` with a one-line message naming the file.
"""

import collections
import os
import pickle
import zipfile

import torch


class CheckpointError(Exception):
    """A checkpoint/tokenizer/stats file that cannot be used; the message names the file and what to do."""


# --------------------------------------------------------------------------------
#                        Restricted unpickler (tier 2)
# --------------------------------------------------------------------------------

class InertObject:
    """Stands in for any global the restricted unpickler does not allow.

    Constructing, calling or restoring state on it has no effect, so a payload such
    as `os.system("...")` becomes an InertObject instead of running."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return InertObject()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
if hasattr(torch._utils, "_rebuild_parameter_with_state"):
    _ALLOWED_GLOBALS[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state


def _allowed_global(module, name):
    if (module, name) in _ALLOWED_GLOBALS:
        return _ALLOWED_GLOBALS[(module, name)]
    # Typed storages (torch.FloatStorage, ...) and dtypes (torch.float32) are data, not code.
    if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
        return getattr(torch, name)
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "slice", "complex", "bytearray"):
        return {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex, "bytearray": bytearray}[name]
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _allowed_global(module, name)
        if allowed is not None:
            return allowed
        return type(f"Inert[{module}.{name}]", (InertObject,), {})


class _RestrictedPickleModule:
    """Passed to torch.load as `pickle_module`; torch subclasses `Unpickler` and routes find_class through ours."""
    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    __name__ = "restricted_pickle"


def strip_to_tensors(obj):
    """Keep tensors and the dicts/lists that hold them; drop everything else (placeholders included)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        kept = {}
        for k, v in obj.items():
            if isinstance(k, str):
                v = strip_to_tensors(v)
                if v is not None:
                    kept[k] = v
        return kept or None
    if isinstance(obj, (list, tuple)):
        kept = [strip_to_tensors(v) for v in obj]
        return kept if any(v is not None for v in kept) else None
    return None


# --------------------------------------------------------------------------------
#                                 Public API
# --------------------------------------------------------------------------------

def safe_torch_load(path, trust=False, trust_flag="--trust_checkpoint"):
    """Load a `.pt` file on the CPU without executing code from it (see module docstring).

    Returns the loaded object (with tier 2: only tensors and their containers)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: file is empty (truncated or corrupt); download or copy it again")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        # Neither torch.save's zip archive nor a pickle: say so instead of inviting --trust_checkpoint.
        raise CheckpointError(f"{path}: not a checkpoint file (neither a PyTorch .pt archive nor a pickle); "
                              f"check the path")
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {_first_line(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "truncated" in str(e).lower() or "ran out of input" in str(e).lower():
            raise CheckpointError(f"{path}: file is truncated or corrupt; download or copy it again") from None
        first_error = e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: file is truncated or corrupt ({_first_line(e)}); download or copy it again") from None
    # Tier 2: weights_only refused a global; load with the restricted unpickler.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot be loaded safely ({_first_line(first_error)}); "
                              f"if you trust its source, pass {trust_flag}") from None
    obj = strip_to_tensors(obj)
    if obj is None:
        raise CheckpointError(f"{path}: holds no tensors, only objects that would need code execution; "
                              f"if you trust its source, pass {trust_flag}")
    return obj


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
