"""Log-parsing benchmark: Loghub streams through the engine with PAIR variants side by side (stream.py;
`python -m bench.logparse`) and its reports (report.py)."""
