"""engine/scheduler, engine/radix_cache and engine/pair import without torch or triton."""
from __future__ import annotations

import subprocess
import sys

import pytest

BLOCKER = """
import sys, importlib
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'triton', 'transformers', 'numpy'):
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
importlib.import_module(sys.argv[1])
"""


@pytest.mark.parametrize("module", ["engine.scheduler", "engine.radix_cache", "engine.pair", "engine.config",
                                    "engine.sampling_params", "engine.forward_mode"])
def test_imports_without_torch(module):
    proc = subprocess.run([sys.executable, "-c", BLOCKER, module], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
