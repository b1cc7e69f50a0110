"""Grounded answers on the real server and SmolLM2: knowledge base, correction memory, and their cost.

The knowledge base is DSTC9's FAQ (`../shared/data/dstc9-faq/`) as a help centre would publish it: one
Markdown page per hotel or restaurant (plus one for taxis and one for trains), each question a heading
and its answer the paragraph under it, added with `supportloop kb add`. 30 entities are left out of it.
Questions name the entity ("What time is check-in at Ashley Hotel?"); 30 are also asked reworded (written
by hand: other words, other order). Four servers, one after the other, each warmed up with 16 questions:

- **kb**: the defaults (KB on, quoting on): fact score on 100 questions, how many were quoted, the share
  of 30 questions about left-out entities that got a "don't know" (refusal rate), and false refusals.
- **model**: KB on, quoting and the no-answer text off: every answer is the model's, from the grounded
  prompt (the generative fact score), and its TTFT at 16 concurrent sessions; then the same questions
  with retrieval off on the same store (the TTFT to compare with, as configured and model-only), and
  with retrieval on but nothing good enough to use (every question is embedded and searched, the prompt
  stays as without retrieval: what retrieval itself costs).
- **memory**: KB off. First the same 100 questions (the fact score without a KB), then 30 answers are corrected with the reference (approved, no
  training) and the 30 questions are asked again as is, reworded, and 30 questions about other entities
  (same topics: the hard case for a wrong correction).

In process: recall@3 of the right passage for the 100 questions and the 30 rewordings; p50/p95 of a
retrieval (query embedding + search) with 10,000 and 100,000 synthetic passages; ingestion speed from
`kb add`'s own report. The recall and the latencies again with pgvector in PostgreSQL (the local one
if it has the extension, else PostgreSQL 16 from the `pgserver` test wheel; "not run" without either). Fact score: `trainer/facts.py`.

Targets: fact score with KB ≥ 0.8; refusal ≥ 0.8; memory ≥ 0.9 same wording, ≥ 0.7 reworded, false hits
≤ 5%; TTFT with retrieval ≤ 1.2× without.

    .venv/bin/python bench/grounding.py            # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import live

from trainer.facts import fact_score

REWORDED = {  # DSTC9 id → the question in other words (the entity named)
    "restaurant-508-9": "Can I eat outside at Midsummer House Restaurant?",
    "restaurant-19225-6": "At Dojo Noodle Bar, is there somewhere to leave my car?",
    "hotel-27-3": "Which cards or payment types does Rosa's Bed and Breakfast take?",
    "hotel-9-14": "Is the Avalon suitable for disabled guests?",
    "hotel-11-2": "Do I have to book a parking space ahead at Bridge Guest House?",
    "restaurant-12638-8": "Is there internet for customers at Wagamama?",
    "hotel-13-8": "Can my dog stay with me at City Centre North B and B?",
    "restaurant-12700-4": "Is there food without gluten at Prezzo?",
    "restaurant-19188-6": "Can a wheelchair user get into Backstreet Bistro?",
    "restaurant-19263-2": "Can I order a beer or wine at The Nirala?",
    "restaurant-19260-8": "Is there a band playing at Hakka in the evenings?",
    "hotel-7-7": "By when do I need to leave my room at Ashley Hotel?",
    "restaurant-19212-9": "Will Charlie Chan bring food to my house?",
    "restaurant-19198-4": "Can someone in a wheelchair get inside Sitar Tandoori?",
    "restaurant-19256-8": "Sala Thong: which cards can I pay with?",
    "restaurant-14742-13": "Am I allowed to bring my own wine to Bloomsbury Restaurant?",
    "restaurant-19171-10": "Can guests bring their own bottle to Cotto?",
    "hotel-8-11": "Which languages do the staff at Autumn House speak?",
    "restaurant-12566-1": "Is the internet free at La Tasca?",
    "restaurant-12482-9": "Does The Slug and Lettuce have wireless internet for diners?",
    "hotel-5-36": "Will my room at Arbury Lodge Guesthouse be cleaned every day?",
    "restaurant-19261-10": "Can I get a drink with alcohol at Saigon City?",
    "hotel-24-12": "Is there internet access for guests at Leverton House?",
    "restaurant-19236-5": "Are there seats for babies at Bangkok City?",
    "restaurant-19249-1": "Can I order wine or beer at Cocum?",
    "restaurant-19189-8": "Where can I leave my car when I visit Meze Bar?",
    "hotel-28-4": "Is smoking allowed anywhere at The Cambridge Belfry?",
    "restaurant-19216-9": "Is it OK to take my own wine into Little Seoul?",
    "restaurant-19238-0": "Can I order food to take away from The Gardenia?",
    "hotel-25-13": "Can I leave my bags somewhere at Limehouse?",
}
REFUSAL = re.compile(r"\b(?:don't know|do not know|not sure|no information|a person|our team|unable to)\b", re.I)
_HERE = re.compile(
    r"\b(?:at this location|this location|at your hotel|your hotel|at your location|your location|this hotel|"
    r"this restaurant|your restaurant|this site|this property|there|here)\b",
    re.I,
)


def _entity(row: dict) -> str:
    return row["entity_name"].title() if row["entity_name"] else row["domain"].title()


def question(row: dict) -> str:
    """The DSTC9 question with its entity named, as a customer on a general help page would ask it."""
    name, text = _entity(row), row["question"].strip()
    if not row["entity_name"] or name.lower() in text.lower():
        return text
    named = _HERE.sub(name, text, count=1)
    return named if named != text else f"{text.rstrip('?')} at {name}?"


def load_rows() -> list[dict]:
    return [json.loads(line) for line in live.FAQ.open()]


def split(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """(rows in the knowledge base, rows of the 30 left-out entities); the reworded ones stay in."""
    keep = {r["entity_name"] for r in rows if r["id"] in REWORDED}
    entities = sorted({r["entity_name"] for r in rows if r["entity_name"]} - keep)
    left_out = set(random.Random(seed).sample(entities, 30))
    return [r for r in rows if r["entity_name"] not in left_out], [r for r in rows if r["entity_name"] in left_out]


def write_pages(rows: list[dict], folder: Path) -> None:
    pages: dict[str, list[dict]] = {}
    for row in rows:
        pages.setdefault(_entity(row), []).append(row)
    for name, items in pages.items():
        body = "\n\n".join(f"## {r['question'].strip()}\n\n{r['answer'].strip()}" for r in items)
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        (folder / f"{slug}.md").write_text(f"# {name}\n\n{body}\n")


def kb_add(env: dict[str, str], folder: Path) -> dict:
    out = subprocess.run([live.CLI, "kb", "add", str(folder), "--source", "help-centre"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout  # fmt: skip
    passages, seconds = re.search(r"(\d+) passages embedded in ([\d.]+) s", out).groups()
    return {
        "passages": int(passages),
        "seconds": float(seconds),
        "passages_per_s": round(int(passages) / float(seconds), 1),
    }


def _ask(url: str, questions: list[str]) -> list[dict]:
    answers = live.ask_all(url.replace("http", "ws") + "/ws/chat", questions)
    refused = sorted({a["code"] for a in answers if a.get("code")})
    if refused:
        raise RuntimeError(f"questions were refused: {refused}")
    return answers


def _score(answers: list[dict], rows: list[dict]) -> float:
    return round(statistics.fmean(fact_score(a["text"], r["answer"]) for a, r in zip(answers, rows, strict=True)), 4)


def _share(answers: list[dict], test) -> float:
    return round(sum(map(test, answers)) / len(answers), 4)


def _pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)


def _ttft(answers: list[dict]) -> dict:
    ttft = [a["ttft_s"] for a in answers]
    return {"p50_ms": _pct(ttft, 50), "p95_ms": _pct(ttft, 95)}


def _quoted(answer: dict) -> bool:
    return bool(answer.get("sources")) and answer.get("prompt_tokens") == 0


WARM_UP = ["Hello!", "Can I change my booking?", "Do you have wifi?", "Thanks, bye."] * 4


def _serve(env: dict[str, str]):
    """A ready server, warmed up with 16 questions at once (its first batch is not measured)."""
    server, url = live.start_server(env, "--no-access-log")
    _ask(url, WARM_UP)
    return server, url


def _stop(server) -> None:
    server.terminate()
    server.wait()


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {"SUPPORTLOOP_DATA_DIR": str(data_dir), "SUPPORTLOOP_MAX_NEW_TOKENS": "64",
            "SUPPORTLOOP_RATE_LIMIT": "100000/minute", **extra}  # fmt: skip


def kb_phase(env: dict[str, str], asked: list[dict], reworded: list[dict], outside: list[dict]) -> dict:
    """The defaults: quoting and the no-answer text on."""
    server, url = _serve(env)
    try:
        answers = _ask(url, [question(r) for r in asked])
        again = _ask(url, [REWORDED[r["id"]] for r in reworded])
        unknown = _ask(url, [question(r) for r in outside])
    finally:
        _stop(server)
    return {
        "fact_score": _score(answers, asked),
        "fact_score_reworded": _score(again, reworded),
        "quoted": _share(answers, _quoted),
        "ttft_16_sessions": _ttft(answers),
        "cited": _share(answers, lambda a: bool(a["sources"])),
        "false_refusals": _share(answers, lambda a: bool(REFUSAL.search(a["text"]))),
        "false_refusals_reworded": _share(again, lambda a: bool(REFUSAL.search(a["text"]))),
        "refusal_rate": _share(unknown, lambda a: bool(REFUSAL.search(a["text"]))),
        "examples": [
            {"question": question(r), "answer": a["text"], "reference": r["answer"]}
            for r, a in list(zip(asked, answers))[:3]
        ],  # fmt: skip
    }


def model_phase(env: dict[str, str], asked: list[dict], outside: list[dict]) -> dict:
    """Every answer from the model with the grounded prompt (no quoting, no fixed no-answer text); then
    the same questions with retrieval off, on the same store, for the TTFT comparison."""
    server, url = _serve({**env, "SUPPORTLOOP_QUOTE_MIN_SCORE": "2", "SUPPORTLOOP_NO_ANSWER_TEXT": ""})
    try:
        answers = _ask(url, [question(r) for r in asked])
        unknown = _ask(url, [question(r) for r in outside])
    finally:
        _stop(server)
    server, url = _serve({**env, "SUPPORTLOOP_KB": "false", "SUPPORTLOOP_MEMORY": "false"})
    try:
        alone = _ask(url, [question(r) for r in asked])
    finally:
        _stop(server)
    server, url = _serve({**env, "SUPPORTLOOP_KB_MIN_SCORE": "1", "SUPPORTLOOP_MEMORY": "false",
                          "SUPPORTLOOP_NO_ANSWER_TEXT": ""})  # fmt: skip
    try:  # every question retrieves, none is grounded: what retrieval itself costs
        searched = _ask(url, [question(r) for r in asked])
    finally:
        _stop(server)
    return {
        "fact_score": _score(answers, asked),
        "refusal_rate": _share(unknown, lambda a: bool(REFUSAL.search(a["text"]))),
        "prompt_tokens": round(statistics.fmean(a["prompt_tokens"] for a in answers), 1),
        "prompt_tokens_without_retrieval": round(statistics.fmean(a["prompt_tokens"] for a in alone), 1),
        "ttft_16_sessions": _ttft(answers),
        "ttft_16_sessions_without_retrieval": _ttft(alone),
        "ttft_16_sessions_retrieval_only": _ttft(searched),
        "examples": [
            {"question": question(r), "answer": a["text"], "reference": r["answer"]}
            for r, a in list(zip(asked, answers))[:3]
        ],  # fmt: skip
    }


def memory_phase(env: dict[str, str], asked: list[dict], corrected: list[dict], others: list[dict]) -> dict:
    """No KB. The model alone first; then approved corrections, used at once."""
    server, url = _serve({**env, "SUPPORTLOOP_KB": "false"})
    try:
        alone = _ask(url, [question(r) for r in asked + corrected])
        token = live.staff_token(env)
        for answer, row in zip(alone[len(asked) :], corrected, strict=True):
            live.approve(url, token, answer["message_id"], row["answer"])
        same = _ask(url, [question(r) for r in corrected])
        reworded = _ask(url, [REWORDED[r["id"]] for r in corrected])
        unrelated = _ask(url, [question(r) for r in others])
    finally:
        _stop(server)
    corrections = lambda a: any(s["kind"] == "correction" for s in a["sources"])  # noqa: E731
    return {
        "fact_score_without_kb": _score(alone[: len(asked)], asked),
        "fact_score_same_wording": _score(same, corrected),
        "fact_score_reworded": _score(reworded, corrected),
        "used_same_wording": _share(same, corrections),
        "used_reworded": _share(reworded, corrections),
        "false_hit_rate": _share(unrelated, corrections),
    }


def recall(store_url: str, asked: list[dict], reworded: list[dict]) -> dict:
    """recall@3 of the passage that answers the question, and of any passage of the right entity."""
    from bot.runtime.interface import Retriever, load_embedder
    from feedback.db import open_store

    store = open_store(store_url)
    retriever = Retriever(store, load_embedder(), memory=False)

    def hits(rows: list[dict], texts: list[str]) -> tuple[float, float]:
        exact = entity = 0
        for row, text in zip(rows, texts, strict=True):
            titles = [hit.title for hit in retriever.search(text, 3)]
            exact += f"{_entity(row)} › {row['question'].strip()}" in titles
            entity += any(t.startswith(_entity(row) + " › ") for t in titles)
        return round(exact / len(rows), 4), round(entity / len(rows), 4)

    try:
        as_is, as_is_entity = hits(asked, [question(r) for r in asked])
        again, again_entity = hits(reworded, [REWORDED[r["id"]] for r in reworded])
    finally:
        store.dispose()
    return {"recall_at_3": as_is, "recall_at_3_reworded": again,
            "entity_recall_at_3": as_is_entity, "entity_recall_at_3_reworded": again_entity}  # fmt: skip


def retrieval_latency(sizes: list[int], queries: list[str], pgvector: str | None) -> dict:
    """p50/p95 of `Retriever.retrieve` (query embedding and search) over `sizes` synthetic passages
    (random unit vectors: embedding 100,000 real passages would take most of an hour here), in process
    on SQLite and, with `pgvector` (an admin URL), by pgvector's HNSW index in PostgreSQL."""
    from feedback.db import open_store

    result: dict = {}
    for size in sizes:
        folder = Path(tempfile.mkdtemp(prefix="supportloop-bench-kb-"))
        stores = {"in_process": f"sqlite:///{folder / 'kb.db'}"}
        if pgvector:
            stores["pgvector"] = live.postgres_database(pgvector, "supportloop_bench_pgvector")
        for where, url in stores.items():
            store = open_store(url)
            try:
                _synthetic_kb(store, size)
                result.setdefault(where, {})[str(size)] = _latency(store, queries)
            finally:
                store.dispose()
                if where == "pgvector":
                    live.drop_database(url, pgvector)
    return result


def _synthetic_kb(store, size: int) -> None:
    import numpy as np

    from bot.runtime.interface import load_embedder
    from feedback.knowledge import Document, Passage, store_document

    embedder, rng = load_embedder(), np.random.default_rng(0)
    for start in range(0, size, 1000):
        vectors = rng.standard_normal((min(1000, size - start), embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        passages = [
            Passage(f"page {start} › section {i}", f"synthetic passage {start + i}") for i in range(len(vectors))
        ]
        document = Document(f"/synthetic/{start}.md", "", f"page {start}", f"sha256:{start}", passages)
        with store.session() as session:
            store_document(session, source="synthetic", document=document, embedding_model=embedder.identity,
                           embeddings=[v.tobytes() for v in vectors])  # fmt: skip


def _latency(store, queries: list[str]) -> dict:
    """Loading (the first retrieval: reading the passages, or copying the vectors into pgvector and
    building its index), then each query's retrieval."""
    from bot.runtime.interface import Retriever, load_embedder

    retriever = Retriever(store, load_embedder(), memory=False)
    started = time.perf_counter()
    retriever.retrieve(queries[0])
    load_s = time.perf_counter() - started
    seconds = []
    for text in queries:
        started = time.perf_counter()
        retriever.retrieve(text)
        seconds.append(time.perf_counter() - started)
    return {"p50_ms": _pct(seconds, 50), "p95_ms": _pct(seconds, 95), "load_s": round(load_s, 2)}


def run(seed: int, questions: int, sizes: list[int]) -> dict:
    rows = load_rows()
    in_kb, left_out = split(rows, seed)
    rng = random.Random(seed)
    corrected = [r for r in rows if r["id"] in REWORDED]
    named = [r for r in in_kb if r["entity_name"] and r["id"] not in REWORDED]
    asked = corrected + rng.sample(named, questions - len(corrected))
    outside = rng.sample(left_out, 30)
    others = rng.sample([r for r in named if r not in asked], 30)
    work = Path(tempfile.mkdtemp(prefix="supportloop-grounding-"))
    (work / "pages").mkdir()
    write_pages(in_kb, work / "pages")
    env = _env(work / "kb")
    result = {"questions": len(asked), "kb_entities": len({_entity(r) for r in in_kb}),
              "ingestion": kb_add(env, work / "pages")}  # fmt: skip
    result["retrieval"] = recall(f"sqlite:///{work / 'kb' / 'supportloop.db'}", asked, corrected)
    pgvector, where = live.services.pgvector_database(live.PG_ADMIN, work / "pgvector")
    result["pgvector"] = where
    if pgvector:
        url = live.postgres_database(pgvector, "supportloop_bench_pgvector")
        try:
            kb_add({**env, "SUPPORTLOOP_DATABASE_URL": url}, work / "pages")
            result["retrieval_pgvector"] = recall(url, asked, corrected)
        finally:
            live.drop_database(url, pgvector)
    result["kb"] = kb_phase(env, asked, corrected, outside)
    result["model"] = model_phase(env, asked, outside)
    result["memory"] = memory_phase(_env(work / "memory"), asked, corrected, others)
    result["retrieval_latency"] = retrieval_latency(sizes, [question(r) for r in asked], pgvector)
    off = result["model"]["ttft_16_sessions_without_retrieval"]
    for name, on in (
        ("default", result["kb"]["ttft_16_sessions"]),
        ("model_only", result["model"]["ttft_16_sessions"]),
        ("retrieval_only", result["model"]["ttft_16_sessions_retrieval_only"]),
    ):
        result[f"ttft_ratio_{name}"] = {q: round(on[f"{q}_ms"] / off[f"{q}_ms"], 3) for q in ("p50", "p95")}
    return result


def summary(r: dict) -> str:
    kb, model, memory, lat = r["kb"], r["model"], r["memory"], r["retrieval_latency"]
    ok = (kb["fact_score"] >= 0.8 and kb["refusal_rate"] >= 0.8 and memory["fact_score_same_wording"] >= 0.9
          and memory["fact_score_reworded"] >= 0.7 and memory["false_hit_rate"] <= 0.05
          and max(r["ttft_ratio_model_only"].values()) <= 1.2)  # fmt: skip
    sizes = "; ".join(
        f"{where} " + ", ".join(f"{int(n):,}: p50 {v['p50_ms']} / p95 {v['p95_ms']} ms" for n, v in by_size.items())
        for where, by_size in lat.items()
    )
    pg = r.get("retrieval_pgvector")
    pg_recall = (
        f" (pgvector {pg['recall_at_3']:.2f} / {pg['recall_at_3_reworded']:.2f})" if pg else " (pgvector not run)"
    )
    return (
        f"grounding: fact score {memory['fact_score_without_kb']:.3f} without KB → {kb['fact_score']:.3f} with "
        f"({kb['quoted']:.0%} quoted; model alone from the grounded prompt {model['fact_score']:.3f}); "
        f"recall@3 {r['retrieval']['recall_at_3']:.2f} as asked, {r['retrieval']['recall_at_3_reworded']:.2f} reworded{pg_recall}; "
        f"refusals {kb['refusal_rate']:.0%} (false {kb['false_refusals']:.0%}); memory {memory['fact_score_same_wording']:.3f} "
        f"same / {memory['fact_score_reworded']:.3f} reworded, false hits {memory['false_hit_rate']:.0%}; "
        f"retrieval {sizes}; TTFT at 16 sessions vs retrieval off: p50 ×{r['ttft_ratio_default']['p50']} as configured, "
        f"×{r['ttft_ratio_model_only']['p50']} when the model answers all, ×{r['ttft_ratio_retrieval_only']['p50']} "
        f"retrieving with the prompt unchanged "
        f"({model['prompt_tokens_without_retrieval']:.0f} → {model['prompt_tokens']:.0f} prompt tokens); "
        f"ingestion {r['ingestion']['passages_per_s']} "
        f"passages/s; targets {'met' if ok else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", type=int, default=100, help="questions about the KB's entities (default 100)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="synthetic KB sizes")
    args = parser.parse_args()
    result = run(args.seed, args.questions, args.sizes)
    print(json.dumps(result, indent=2))
    print(summary(result))


if __name__ == "__main__":
    main()
