#!/usr/bin/env bash
# The vLLM backend on a GPU machine, in one short run: a vLLM OpenAI-compatible server with runtime LoRA
# updating, then supportloop's own benchmarks pointed at it (SUPPORTLOOP_BACKEND=vllm): TTFT and tokens/s
# at 16 and 64 sessions (bench/serve.py) and adapter swaps under load (bench/swap.py). Prints their JSON
# and summary lines; vLLM's log goes to $OUT/vllm.log (or ./vllm.log).
#
#   bash bench/vllm_backend.sh            # needs: a CUDA GPU, `pip install vllm` in this venv, `make model`
#
# Not run on the project's machines (no GPU; the lent GPU machine cannot install vllm): see docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${SUPPORTLOOP_BASE_MODEL:-$HOME/.cache/supportloop/SmolLM2-135M-Instruct}
PORT=${VLLM_PORT:-8001}
LOG=${OUT:-.}/vllm.log

"$PY" -c "import vllm" 2>/dev/null || { echo "vllm is not installed in $PY's environment: pip install vllm" >&2; exit 2; }
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "$PY" -m vllm.entrypoints.openai.api_server \
    --model "$MODEL" --port "$PORT" --enable-lora --max-loras 4 --max-lora-rank 16 \
    --gpu-memory-utilization 0.5 > "$LOG" 2>&1 &
VLLM_PID=$!
trap 'kill $VLLM_PID 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 $VLLM_PID 2>/dev/null || { echo "vLLM exited; its log:" >&2; tail -50 "$LOG" >&2; exit 1; }
    sleep 1
done

export SUPPORTLOOP_BACKEND=vllm SUPPORTLOOP_VLLM_URL="http://127.0.0.1:$PORT" SUPPORTLOOP_BASE_MODEL="$MODEL"
"$PY" bench/serve.py --levels 16 64
"$PY" bench/swap.py --sessions 16 --promotions 3 --gap 4 --baseline 10
