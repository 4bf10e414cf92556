"""`python -m bench.cachesim`: the prefix-cache simulator (bench/cachesim/simulate.py)."""
from bench.cachesim.simulate import main

main()
