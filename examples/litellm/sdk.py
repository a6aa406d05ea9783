"""LiteLLM Router with the picker choosing among self-hosted engines (run against `llm-picker
sim` engines on 8001/8002, or your vLLM/SGLang servers)."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network for the cost map

from litellm import Router  # noqa: E402

from litellm_plugin import PickerStrategy  # noqa: E402


def make_router(api_bases: list[str], policy: str = "prefix_cache") -> Router:
    router = Router(model_list=[
        {"model_name": "my-model",
         "litellm_params": {"model": "hosted_vllm/sim-model", "api_base": base, "api_key": "x"}}
        for base in api_bases
    ])
    PickerStrategy.attach(router, policy=policy, prefix={"enabled": policy in (
        "prefix_cache", "cache_aware")})
    return router


if __name__ == "__main__":
    router = make_router(["http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1"])
    reply = router.completion(model="my-model", messages=[{"role": "user", "content": "hi"}])
    print(reply.choices[0].message.content)
