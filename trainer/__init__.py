"""Learning: datasets from the store, LoRA training rounds with TRL, the gate, publishing adapters.

Never imports FastAPI or the server; `bot.runtime.base_model` is the one piece of `bot` it may use."""
