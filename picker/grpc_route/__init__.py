"""The gRPC regular router's request path: OpenAI chat and completions to an engine's Generate
service and back (transcoder.py), SGLang's or vLLM's by the worker's runtime_type (engines.py),
with gRPC framing (framing.py), the Generate call (request.py) and the answer rebuilt from the
engine's stream (answer.py)."""

from picker.grpc_route.engines import GrpcEngine, engine_for
from picker.grpc_route.transcoder import GrpcTranscoder, TokenizerUnavailable, WorkerTokenizers

__all__ = ["GrpcEngine", "GrpcTranscoder", "TokenizerUnavailable", "WorkerTokenizers",
           "engine_for"]
