"""`python -m bench.logparse`: log-parsing streams through the engine (bench/logparse/stream.py)."""
from bench.logparse.stream import main

main()
