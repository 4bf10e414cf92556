"""`python -m bench.serving`: the serving load generator (bench/serving/loadgen.py)."""
from bench.serving.loadgen import main

main()
