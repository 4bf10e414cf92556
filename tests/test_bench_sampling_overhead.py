"""bench.sampling_overhead on the tiny model: every variant keeps its whole batch decoding through the timed
steps (so the timings compare equal batches) and leaves the engine empty."""
from bench.sampling_overhead.__main__ import VARIANTS, ForwardTimer, run_variant
from engine.config import ServerArgs
from engine.loop import EngineLoop
from engine.models.loader import load_tokenizer


def test_every_variant_times_full_batches(tiny_model_dir):
    loop = EngineLoop(ServerArgs(model_path=tiny_model_dir, max_running_requests=4, kv_cache_tokens=2048,
                                 dtype="float32"), tiny_model_dir, load_tokenizer(tiny_model_dir))
    timer = ForwardTimer(loop.runner)
    prompts = [[5 + i, 6, 7, 8] for i in range(4)]
    for v in VARIANTS:
        totals, forwards, processing = run_variant(loop, timer, prompts, v, steps=3, tag=v)
        assert len(totals) == len(forwards) == len(processing) == 3
        assert all(t >= f > 0 for t, f in zip(totals, forwards))
        assert not loop.has_work()
    loop.scheduler.check_integrity()
    assert loop.scheduler.kv.allocator.num_free == loop.scheduler.kv.capacity
