"""A fake vLLM OpenAI-compatible server (runtime LoRA updating on), served on a real port by the tests:
`/health`, `/v1/models`, `/v1/chat/completions` (streamed as server-sent events, or not),
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, answering as vLLM does (an unknown model: 404; an
adapter loaded twice: 400 "already been loaded"). It answers "answer from MODEL ." a word at a time and
records every call. An adapter whose path contains "broken" is refused; one with "mute" answers nothing."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


class FakeVLLM:
    def __init__(self, base: str = "base-model", delay: float = 0.0, words: int = 0) -> None:
        self.base, self.delay, self.words = base, delay, words
        self.loras: dict[str, str] = {}
        self.calls: list[tuple[float, str, dict]] = []  # (when, endpoint, body)
        self.finished: list[tuple[float, str, str]] = []  # (when, model, "done" or "disconnected")
        self.healthy = True
        self.app = self._app()

    def answer(self, model: str) -> list[str]:
        if "mute" in self.loras.get(model, ""):
            return []
        return [f"answer from {model}"] + [f" w{i}" for i in range(self.words)] + [" ."]

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        def health():
            return JSONResponse({}, status_code=200 if self.healthy else 503)

        @app.get("/v1/models")
        def models():
            data = [{"id": self.base, "parent": None}] + [{"id": n, "parent": self.base} for n in self.loras]
            return {"object": "list", "data": data}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request):
            body = await request.json()
            self.calls.append((time.monotonic(), "load", body))
            name, path = body["lora_name"], body["lora_path"]
            if "broken" in path:
                return JSONResponse({"error": {"message": f"invalid adapter at {path}"}}, status_code=400)
            if name in self.loras:
                return JSONResponse({"error": {"message": f"The lora adapter '{name}' has already been loaded."}}, 400)
            self.loras[name] = path
            return JSONResponse("Success: LoRA adapter loaded")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request):
            body = await request.json()
            self.calls.append((time.monotonic(), "unload", body))
            if self.loras.pop(body["lora_name"], None) is None:
                return JSONResponse({"error": {"message": "not found"}}, status_code=404)
            return JSONResponse("Success: LoRA adapter unloaded")

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.calls.append((time.monotonic(), "chat", body))
            model = body["model"]
            if model != self.base and model not in self.loras:
                return JSONResponse({"error": {"message": f"The model `{model}` does not exist."}}, status_code=404)
            words = self.answer(model)[: body.get("max_tokens", 10_000)]
            usage = {"prompt_tokens": 7, "completion_tokens": len(words)}
            if not body.get("stream"):
                message = {"role": "assistant", "content": "".join(words)}
                return {"choices": [{"message": message, "finish_reason": "stop"}], "usage": usage}
            return StreamingResponse(self._stream(model, words, usage), media_type="text/event-stream")

        return app

    async def _stream(self, model: str, words: list[str], usage: dict):
        try:
            for word in words:
                await asyncio.sleep(self.delay)
                yield f"data: {json.dumps({'choices': [{'delta': {'content': word}, 'finish_reason': None}]})}\n\n"
            yield f"data: {json.dumps({'choices': [{'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
            self.finished.append((time.monotonic(), model, "done"))
        except (asyncio.CancelledError, GeneratorExit):
            self.finished.append((time.monotonic(), model, "disconnected"))
            raise
