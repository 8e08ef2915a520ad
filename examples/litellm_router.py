#!/usr/bin/env python3
"""dualtrack inside a LiteLLM Router: one call wires it, LiteLLM keeps doing the calls.

The model group "chat" has a local deployment (Ollama's OpenAI-compatible
endpoint: a loopback ``api_base`` makes it local) and an API one (tagged
``model_info: {"dualtrack_track": "api"}``, which also covers an API served
from a loopback proxy). ``instrument(router, optimizer)`` records every
call and routes each request of "chat" the way the optimizer recommends;
``handle.acompletion`` also races both tracks when it recommends parallel.

    ollama serve && OPENAI_API_KEY=... python examples/litellm_router.py
    python examples/litellm_router.py --mock          # no server at all: LiteLLM's mock_response

URLs: --local-url / DUALTRACK_LOCAL_URL (default http://127.0.0.1:11434/v1),
--api-url / DUALTRACK_API_URL (default: the provider's own).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any, Dict, List

# LiteLLM fetches its price list from GitHub when imported unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm import Router  # noqa: E402

from dualtrack import DualTrackOptimizer, OptimizationConfig  # noqa: E402
from dualtrack.integrations.litellm import instrument  # noqa: E402

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def model_list(args: argparse.Namespace) -> List[Dict[str, Any]]:
    local: Dict[str, Any] = {"model": f"openai/{args.local_model}", "api_base": args.local_url, "api_key": "none"}
    api: Dict[str, Any] = {"model": f"openai/{args.api_model}",
                           "api_key": os.environ.get(args.api_key_env) or "missing-key"}
    if args.api_url:
        api["api_base"] = args.api_url
    if args.mock:
        local["mock_response"], api["mock_response"] = "Paris (local).", "Paris (API)."
    return [{"model_name": "chat", "litellm_params": local},
            {"model_name": "chat", "litellm_params": api, "model_info": {"dualtrack_track": "api"}}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local-url", default=os.environ.get("DUALTRACK_LOCAL_URL", "http://127.0.0.1:11434/v1"))
    parser.add_argument("--local-model", default="llama3.1:8b")
    parser.add_argument("--api-url", default=os.environ.get("DUALTRACK_API_URL"))
    parser.add_argument("--api-model", default="gpt-4o-mini")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--requests", type=int, default=4, help="calls of each kind (default 4)")
    parser.add_argument("--mock", action="store_true", help="answer with LiteLLM's mock_response, no server")
    args = parser.parse_args()

    router = Router(model_list=model_list(args), num_retries=1)
    optimizer = DualTrackOptimizer(OptimizationConfig(strategy="adaptive", enable_resource_monitoring=False))
    with instrument(router, optimizer) as dualtrack:
        for _ in range(args.requests):  # sync calls, steered by dualtrack's routing strategy
            response = router.completion(model="chat", messages=MESSAGES)
            print("sync :", response.choices[0].message.content)

        async def calls() -> None:
            for _ in range(args.requests):  # async; a parallel recommendation would race both tracks
                response = await dualtrack.acompletion(model="chat", messages=MESSAGES)
                print("async:", response.choices[0].message.content)
            await dualtrack.adrain(10)

        asyncio.run(calls())
        dualtrack.drain(10)  # sync calls are recorded on LiteLLM's logging threads
        for path, summary in sorted(optimizer.get_optimization_status()["metrics"].get("by_path", {}).items()):
            print(f"{path}: {summary['count']} calls recorded, success rate {summary['success_rate']:.2f}")


if __name__ == "__main__":
    main()
