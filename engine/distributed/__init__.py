"""Tensor parallelism (`--tp-size N`): one process per rank, gloo on CPU and nccl on CUDA.

sharding.py (which slice of each weight a rank holds), comm.py (the group and its collectives, TPGroupDead),
step_meta.py (a step's batch metadata as int64 tensors), launcher.py (rank 0 starts and watches the workers),
worker.py (the worker ranks' loop). Rank 0 is the engine's own process and keeps its scheduling loop; the
model runner (engine/model_runner.py) broadcasts each step to the workers and runs the same forward.
"""
