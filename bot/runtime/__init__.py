"""The model runtime: generation, batching, KV cache, worker processes, adapters in memory. No FastAPI.
The web app uses `bot.runtime.interface` and `bot.runtime.types` only. Keep this file free of imports:
the trainer imports `bot.runtime.base_model`, and the model's worker process must stay light."""
