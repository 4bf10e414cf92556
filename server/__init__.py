"""pairserve's multi-process OpenAI-compatible server: `python -m server --model PATH` (see server.launch)."""
