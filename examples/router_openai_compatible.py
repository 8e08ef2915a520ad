#!/usr/bin/env python3
"""dualtrack's reference router against OpenAI-compatible servers.

The local track is Ollama (or llama.cpp's server, vLLM: anything serving
``/v1/chat/completions``) at http://127.0.0.1:11434/v1 by default; the API
track any hosted OpenAI-compatible API. Each query goes where the optimizer
recommends (local, API, or both raced in parallel), falls back once to the
other track on failure, and every model call is recorded.

    ollama pull llama3.1:8b && ollama serve
    OPENAI_API_KEY=... python examples/router_openai_compatible.py --requests 5
    python examples/router_openai_compatible.py --local-url http://127.0.0.1:8080/v1 --local-model any \\
        --api-url http://127.0.0.1:8000/v1 --api-model served-name

URLs also come from DUALTRACK_LOCAL_URL and DUALTRACK_API_URL; the API key
from the variable --api-key-env names (default OPENAI_API_KEY; none needed
by local servers).
"""

from __future__ import annotations

import argparse
import os

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.router.backends import OpenAICompatibleBackend
from dualtrack.router.router import DualTrackRouter

QUERIES = ("What is the capital of France?", "Explain the CAP theorem in two sentences.",
           "Give three uses of a hash map.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local-url", default=os.environ.get("DUALTRACK_LOCAL_URL", "http://127.0.0.1:11434/v1"))
    parser.add_argument("--local-model", default="llama3.1:8b")
    parser.add_argument("--api-url", default=os.environ.get("DUALTRACK_API_URL", "https://api.openai.com/v1"))
    parser.add_argument("--api-model", default="gpt-4o-mini")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    parser.add_argument("--requests", type=int, default=3, help="queries to send (default 3)")
    parser.add_argument("--stream", action="store_true", help="stream answers (prompt cancellation of a loser)")
    args = parser.parse_args()

    local = OpenAICompatibleBackend(args.local_url, args.local_model, track="local", stream=args.stream)
    api = OpenAICompatibleBackend(args.api_url, args.api_model, track="api", stream=args.stream,
                                  api_key_env=args.api_key_env if os.environ.get(args.api_key_env) else None)
    config = OptimizationConfig(strategy="adaptive")
    with DualTrackOptimizer(config) as optimizer, DualTrackRouter(optimizer, local, api) as router:
        for i in range(args.requests):
            result = router.route(QUERIES[i % len(QUERIES)])
            answer = (result.text or "").strip().replace("\n", " ")[:60] if result.ok else f"failed: {result.error}"
            print(f"{result.path:>8} -> {result.track_used or '-':<5} {result.latency_seconds:6.2f}s "
                  f"{'(fell back) ' if result.fell_back else ''}{answer}")
        router.drain(10)  # every call recorded, the cancelled losers of parallel races included
        for path, summary in sorted(optimizer.get_optimization_status()["metrics"].get("by_path", {}).items()):
            print(f"{path}: {summary['count']} calls recorded")
    local.close()
    api.close()


if __name__ == "__main__":
    main()
