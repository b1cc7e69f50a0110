"""Serving: the chat server, its settings, the generator and the adapter manager.

Keep this file free of imports: the trainer imports `bot.runtime.base_model`, which must not pull in FastAPI."""
