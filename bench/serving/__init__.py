"""Serving benchmark: the load generator (loadgen.py; `python -m bench.serving`), its datasets (data.py), the
backends it drives (backends.py: pairserve, any OpenAI-compatible server, llama.cpp; hf.py: HF transformers in
process) and the metrics it reports (metrics.py). `python -m bench.compare` runs it over several peers."""
