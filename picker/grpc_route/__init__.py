"""The gRPC regular router's request path: OpenAI chat and completions to SGLang's Generate
service and back (transcoder.py), with gRPC framing (framing.py), the Generate call
(request.py) and the answer rebuilt from the engine's stream (answer.py)."""

from picker.grpc_route.transcoder import (
    GENERATE_PATH,
    GrpcTranscoder,
    TokenizerUnavailable,
    WorkerTokenizers,
)

__all__ = ["GENERATE_PATH", "GrpcTranscoder", "TokenizerUnavailable", "WorkerTokenizers"]
