"""LiteLLM Router with the picker choosing among self-hosted engines.

    python examples/litellm/sdk.py http://127.0.0.1:8001/v1 http://127.0.0.1:8002/v1

Each argument is an engine's OpenAI base URL (`llm-picker sim` engines, or vLLM/SGLang servers)
serving the model named by `--model` (default my-model, as the README's sims do).
"""

import argparse
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network for the cost map

from litellm import Router  # noqa: E402

from litellm_plugin import PickerStrategy  # noqa: E402


def make_router(api_bases: list[str], model: str = "my-model",
                policy: str = "prefix_cache") -> Router:
    router = Router(model_list=[
        {"model_name": model,
         "litellm_params": {"model": f"hosted_vllm/{model}", "api_base": base, "api_key": "x"}}
        for base in api_bases
    ])
    PickerStrategy.attach(router, policy=policy, prefix={"enabled": policy in (
        "prefix_cache", "cache_aware")})
    return router


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("api_bases", nargs="+", help="engine base URLs, e.g. http://h:8001/v1")
    parser.add_argument("--model", default="my-model")
    parser.add_argument("--policy", default="prefix_cache")
    args = parser.parse_args()
    router = make_router(args.api_bases, args.model, args.policy)
    reply = router.completion(model=args.model, messages=[{"role": "user", "content": "hi"}])
    print(reply.choices[0].message.content)
