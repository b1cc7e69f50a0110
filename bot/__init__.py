"""Serving: `bot.runtime` (the model runtime, no FastAPI), `bot.server` (the web app) and `bot.cli` (the
`supportloop` command). Keep this file free of imports: the trainer imports `bot.runtime.base_model`."""
