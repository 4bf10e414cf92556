"""Prefix-cache simulator and traces: trace files (traces.py), their block units (units.py), replays through the
engine's RadixCache (replay.py), the Belady bound (belady.py), the learned eviction policy (learned.py) and the
simulator's command (simulate.py; `python -m bench.cachesim`). `bench.tracegen` writes traces and
`bench.learned_policy` trains the learned policy."""
