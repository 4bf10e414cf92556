"""Online tuning of the engine's live scheduling knobs: meta-learned SMBO (AttMAML) and baselines.

Modules: knobs (search space over engine/knobs.py), workload (log-parsing ICL traffic + task features),
objective (closed-loop replay, live apply + window measurement), data (Latin-hypercube meta-data),
attmaml (meta-model), smbo (EI, search loop, AttMAML proposer), baselines (default, random, GP-BO).
CLIs: `python -m autotune` (tune live), `python -m autotune.data` (collect), `python -m bench.autotune`.

Kept free of torch and engine imports at package level, so `import autotune` is cheap.
"""
