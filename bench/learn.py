"""Does a round make the bot reproduce what staff corrected, without hurting other answers?

Against the real server and SmolLM2: asks N DSTC9 questions (one per hotel or restaurant, the entity
named in the question) and N unrelated held-out questions (other entities) over websockets, approves
the DSTC9 reference answers of the first N as staff corrections, runs `supportloop train` (the default
recipe and the evaluation gate), waits for the server to serve the new adapter (the adapter alone, no
retrieval), and asks all 2N again. Prints JSON and a one-line summary: fact score (`trainer/facts.py`:
share of the reference's numbers, content words and yes/no polarity in the answer) before and after on
the corrected and on the held-out questions, training and gate time, and the gate's verdict.

Targets: corrected ≥ 0.8 after; held-out drop ≤ 0.02.

    .venv/bin/python bench/learn.py --corrections 48
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import live

from trainer.facts import mean_fact_score


def _answered(answers: list[dict]) -> list[dict]:
    refused = [a["code"] for a in answers if a.get("code")]
    if refused:
        raise RuntimeError(f"{len(refused)} questions were refused: {sorted(set(refused))}")
    return answers


def _scores(answers: list[dict], pairs: list[dict]) -> float:
    return round(mean_fact_score([a["text"] for a in answers], [p["reference"] for p in pairs]), 4)


def run(n: int, seed: int, extra: list[str]) -> dict:
    corrected, held_out = live.pick_pairs(n, n, seed)
    data_dir = Path(tempfile.mkdtemp(prefix="supportloop-learn-"))
    env = {
        "SUPPORTLOOP_DATA_DIR": str(data_dir),
        "SUPPORTLOOP_ADAPTER_POLL_SECONDS": "0.25",
        "SUPPORTLOOP_MAX_NEW_TOKENS": "64",
        "SUPPORTLOOP_RATE_LIMIT": "100000/minute",
        "SUPPORTLOOP_KB": "false",  # the adapter alone: no retrieval
        "SUPPORTLOOP_MEMORY": "false",
    }  # one client asks all
    server, url = live.start_server(env, "--no-access-log")
    try:
        ws_url = url.replace("http", "ws") + "/ws/chat"
        questions = [p["question"] for p in corrected + held_out]
        before = _answered(live.ask_all(ws_url, questions))
        token = live.staff_token(env)
        for answer, pair in zip(before, corrected):
            live.approve(url, token, answer["message_id"], pair["reference"])
        version, manifest, passed, train_s = live.train_round(env, *extra)
        if passed:
            live.wait_for_version(url, version)
        after = _answered(live.ask_all(ws_url, questions))
    finally:
        server.terminate()
        server.wait()
    return _report(n, corrected, held_out, before, after, version, manifest, train_s)


def _report(n, corrected, held_out, before, after, version, manifest, train_s) -> dict:
    gate = manifest["gate"]
    result = {
        "corrections": n,
        "version": version,
        "served": all(a["adapter_version"] == version for a in after),
        "round_s": round(train_s, 1),
        "train_s": manifest["timings"]["train_s"],
        "gate_s": manifest["timings"]["gate_s"],
        "steps": sum(t["steps"] for t in manifest["training"].values()),
        "precision": manifest["training"]["sft"]["precision"],
        "recipe": manifest["hyperparameters"],
        "gate_passed": gate["passed"],
        "gate_checks": [f"{'pass' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}" for c in gate["checks"]],
        "corrected_before": _scores(before[:n], corrected),
        "corrected_after": _scores(after[:n], corrected),
        "held_out_before": _scores(before[n:], held_out),
        "held_out_after": _scores(after[n:], held_out),
        "examples": [
            {"question": p["question"], "reference": p["reference"], "before": b["text"], "after": a["text"]}
            for p, b, a in list(zip(corrected, before, after))[:3]
        ],
    }
    result["held_out_drop"] = round(result["held_out_before"] - result["held_out_after"], 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrections", type=int, default=48, help="questions to correct (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="which DSTC9 pairs (default 0)")
    parser.add_argument("train_args", nargs="*", help="-- then options for `supportloop train` (e.g. --epochs 4)")
    args = parser.parse_args()
    result = run(args.corrections, args.seed, args.train_args)
    print(json.dumps(result, indent=2))
    ok = result["corrected_after"] >= 0.8 and result["held_out_drop"] <= 0.02
    print(
        f"learn: {result['corrections']} corrections → {result['version']} ({'gate passed' if result['gate_passed'] else 'gate REJECTED'}); "
        f"fact score on corrected {result['corrected_before']:.3f} → {result['corrected_after']:.3f}, held-out "
        f"{result['held_out_before']:.3f} → {result['held_out_after']:.3f} (drop {result['held_out_drop']:+.3f}); "
        f"round {result['round_s']} s (train {result['train_s']} s, gate {result['gate_s']} s, {result['precision']}); "
        f"targets {'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
