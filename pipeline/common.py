"""
Shared plumbing of the three stages: one-line errors with exit code 2, device and precision
choice, atomic file writes, torch.distributed set-up, and the run-directory lock.
"""

import contextlib
import json
import os
import re
import sys
import tempfile

import torch

from models.safe_load import CheckpointError


class UsageError(Exception):
    """Bad input the user can fix; printed as one line, exit code 2."""


def run_cli(main):
    """Run `main()`; turn UsageError/CheckpointError (and disk errors, GPU out of memory) into `error: ...` and
    exit code 2."""
    try:
        return main()
    except (UsageError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except torch.cuda.OutOfMemoryError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "CUDA out of memory"
        print(f"error: the GPU ran out of memory ({first[:160]}); lower --batch_size, or in stage 2 add "
              f"--grad_checkpointing (stage 2: with a new --output_dir, which holds this run's config); the "
              f"README's GPU settings give the largest batch per card", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno in (28, 13, 30, 20, 21):  # ENOSPC, EACCES, EROFS, ENOTDIR, EISDIR: earlier outputs are intact
            print(f"error: cannot write {e.filename or ''}: {e.strerror}; free space or choose another output dir "
                  f"(files written before are intact)", file=sys.stderr)
            sys.exit(2)
        raise


# --------------------------------------------------------------------------------
#                              Device and precision
# --------------------------------------------------------------------------------

DEVICE_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def pick_device(name="auto", local_rank=0):
    """'auto' -> cuda:<local_rank> when available, else cpu; 'cuda' -> cuda:<local_rank>; cpu, mps, cuda:N."""
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(name):
        raise UsageError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def pick_precision(name, device):
    """Autocast dtype (None: fp32) for `--precision auto|fp32|fp16|bf16` on `device`.

    auto: bf16 on GPUs of compute capability >= 8.0 (native bf16), fp16 below (a T4 reports bf16 as
    supported but only emulates it; training adds a grad scaler for fp16), fp32 on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            return None
        major, _ = torch.cuda.get_device_capability(device)
        name = "bf16" if major >= 8 else "fp16"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise UsageError(f"--precision {name}: use auto, fp32, fp16 or bf16")
    return dtypes[name]


def autocast(device, dtype):
    """torch.autocast for `dtype`, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------
#                                 Atomic writes
# --------------------------------------------------------------------------------

TEMP_PREFIX, TEMP_SUFFIX = ".tmp_", ".partial"


def is_temp_file(name):
    """A temp file of atomic_path (hidden, no image/checkpoint extension: no glob or loader picks it up)."""
    name = os.path.basename(name)
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path in the same directory; on success it is fsynced and renamed to `path`, on any
    failure it is removed. Writers that pick a format by extension must name the format explicitly."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path, chunk=1 << 20):
    """SHA-256 hex digest of a file's bytes (the one file hash: downloads, stage 1 fingerprints, duplicates)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def atomic_torch_save(obj, path):
    """torch.save through atomic_path: readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")


# --------------------------------------------------------------------------------
#                                 Distributed
# --------------------------------------------------------------------------------

def init_distributed():
    """Initialise torch.distributed when launched by torchrun. Returns (rank, world_size, local_rank)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, 0
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), local_rank


def barrier(world_size):
    if world_size > 1:
        import torch.distributed as dist
        dist.barrier()


def all_ranks_sum(tensor, device, world_size):
    """The sum of `tensor` over every rank (itself with one process), on the CPU."""
    if world_size == 1:
        return tensor
    import torch.distributed as dist
    total = tensor.to(device)
    dist.all_reduce(total)
    return total.cpu()


def from_rank0(obj, world_size):
    """Rank 0's `obj` (any picklable value) on every rank: a decision taken once, shared by all."""
    if world_size == 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup_distributed(world_size):
    if world_size > 1:
        import torch.distributed as dist
        dist.destroy_process_group()


# --------------------------------------------------------------------------------
#                                   Run lock
# --------------------------------------------------------------------------------

@contextlib.contextmanager
def run_lock(directory):
    """An exclusive `fcntl.flock` on `directory/.lock`: a second process on the same directory is refused
    while we run. The kernel releases the lock when the process ends in any way (also SIGKILL), so a run dir
    copied to a new machine or left by a killed run is never reported as in use."""
    import fcntl
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ".lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UsageError(f"{directory} is in use by process {holder} (it holds {path}); wait for it to end or "
                             f"use another output dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
