"""Run a stage with an injected fault (test helper, started as a subprocess by tests/test_faults.py).

    python tests/fault_runner.py FAULT N stage2_train_dit.py ARGS...

FAULT: kill_in_save (SIGKILL halfway through the N-th torch.save, leaving a partial temp file) or
enospc_in_save (the N-th torch.save fails with "No space left on device" after writing part of it).
"""

import errno
import os
import runpy
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
fault, nth, script, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
real_save = torch.save
calls = {"n": 0}


def faulty_save(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] == nth:
        f.write(b"\x00partial checkpoint" * 4096)
        f.flush()
        if fault == "kill_in_save":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device", getattr(f, "name", None))
    return real_save(obj, f, *a, **k)


torch.save = faulty_save
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
