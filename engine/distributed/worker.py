"""A tensor-parallel worker rank: `python -m engine.distributed.worker --rank R --init-method file://... \
--model-path P --parent-pid PID --args-json JSON` (started by launcher.py, never by hand).

It loads its shard through the same ModelRunner as rank 0, then loops: receive the step's metadata broadcast
(step_meta.py), run the same forward (its collectives pair with rank 0's), until rank 0 sends STOP. Rank 0
alone schedules and samples. Exits 0 on STOP, 1 when the group breaks or the parent process is gone.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time

logger = logging.getLogger("pairserve.tp_worker")


def _exit_with_parent(parent_pid: int) -> None:
    """Daemon thread: a worker must not outlive rank 0's process (a blocked collective would never return)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--init-method", required=True)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--args-json", required=True)
    a = ap.parse_args(argv)
    threading.Thread(target=_exit_with_parent, args=(a.parent_pid,), daemon=True).start()

    from engine.config import ServerArgs
    from engine.model_runner import ModelRunner

    args = ServerArgs(**json.loads(a.args_json)).validate()
    logging.basicConfig(level=args.log_level.upper(), format=f"%(asctime)s tp{a.rank} %(levelname)s %(message)s")
    runner = ModelRunner(args, a.model_path, tp_rank=a.rank, tp_init_method=a.init_method)
    try:
        while runner.serve_one_step():
            pass
    except Exception:
        logger.exception("tensor-parallel rank %d: the group broke; exiting", a.rank)
        return 1
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
