"""What the app's OpenAPI schema says of refusals, beyond what FastAPI writes: every status a route can
refuse with, each with its body's shape, so that clients (and the API fuzzing, which checks that no
response has an undocumented status) know them.

The statuses come from what the operation is, read from the schema itself: any route may find the
database or the model unavailable (503); a body can be unparsable (400), too large (413) or invalid (422); a path names a
row that may not exist (404); staff routes (a bearer token) refuse no or a wrong token (401), a disabled
account, an agent on an admin route or a failed CSRF check (403), and changes conflict with someone
else's (409); customer routes (`X-Session-Token`) refuse no secret (401) and another session's (404);
the chat routes are rate-limited (429). The OpenAI-compatible routes answer in OpenAI's error shape, with
400 for an invalid body."""

from __future__ import annotations

from fastapi import FastAPI

from bot.server.deps import SESSION_TOKEN_HEADER

REFUSAL = {"title": "Refusal", "type": "object", "required": ["detail"],
           "properties": {"detail": {"type": "string", "title": "Detail"}}}  # fmt: skip
OPENAI_ERROR = {
    "title": "OpenAIError",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}},
}
WHY = {
    400: "the body cannot be parsed (under /v1: any invalid body, in OpenAI's error shape)",
    401: "no credentials, or wrong ones",
    403: "not allowed: a disabled account, an agent on an admin route, or a failed CSRF check",
    404: "no such row (or not one this caller may see)",
    409: "someone else changed it first, or it is in another state",
    413: "the body is larger than the server accepts",
    422: "the request breaks a rule",
    429: "too many requests from this address, or the generation queue is full",
    503: "the database or the model is unavailable; retry later",
}
RATE_LIMITED = ("/api/chat", "/v1/chat/completions")


def refusals(path: str, method: str, operation: dict) -> set[int]:
    """The statuses other than success that the operation may answer."""
    codes = {503}
    parameters = operation.get("parameters", [])
    if operation.get("requestBody"):  # 400: not parsable at all (e.g. not UTF-8)
        codes |= {400, 413} | (set() if path.startswith("/v1/") else {422})
    if any(p.get("in") == "path" for p in parameters) or path.startswith("/v1/chat"):
        codes.add(404)  # /v1: an unknown model
    if any(p.get("in") == "header" and p.get("name") == SESSION_TOKEN_HEADER for p in parameters):
        codes |= {401, 404}
    if operation.get("security"):
        codes |= {401, 403} | ({409} if method != "get" else set())
    if path in RATE_LIMITED:
        codes.add(429)
    return codes


def document_refusals(app: FastAPI) -> None:
    """Add every operation's refusals to the schema: FastAPI's 422 becomes either its validation report
    (`detail`: a list) or one of the app's refusals of a rule (`detail`: a message)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["Refusal"], schemas["OpenAIError"] = REFUSAL, OPENAI_ERROR
            for path, item in schema.get("paths", {}).items():
                for method, operation in item.items():
                    _add(path, method, operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add(path: str, method: str, operation: dict) -> None:
    responses, openai = operation.setdefault("responses", {}), path.startswith("/v1/")
    shape = "OpenAIError" if openai else "Refusal"
    codes = refusals(path, method, operation)
    if openai:  # its validation errors are OpenAI's 400, never FastAPI's 422
        responses.pop("422", None)
    elif "422" in responses:  # FastAPI lists it for any parameter: a rule's refusal is one too
        codes.add(422)
    for code in sorted(codes):  # a 413 comes from a middleware, before any route: always a Refusal
        schema: dict = {"$ref": f"#/components/schemas/{'Refusal' if code == 413 else shape}"}
        if code == 422:
            schema = {"anyOf": [{"$ref": "#/components/schemas/HTTPValidationError"}, schema]}
        responses[str(code)] = {"description": WHY[code], "content": {"application/json": {"schema": schema}}}
