"""Benchmarks. Every `python -m bench.NAME` is a command; a command with helpers is a package (NAME/__main__.py).

    serving/ compare gsp      serving load generator, its datasets and backends; peers side by side; GSP data
    cachesim/ tracegen learned_policy sweep   prefix-cache simulator, traces, eviction policies, sweeps
    logparse/ forward_split   log-parsing streams through the engine; where a step's time goes
    offline autotune gpu_check                engine throughput in process; autotuner comparison; GPU checks
    common/                   machine facts, plots, model paths shared by all of them
"""
