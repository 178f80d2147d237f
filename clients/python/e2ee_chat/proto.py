"""The generated chat.v2 messages (``pb``) and gRPC stubs (``pb_grpc``), which setup.sh
makes from proto/chat/v2/chat.proto into clients/python/generated (never committed)."""

import sys
from pathlib import Path

# The generated stubs live next to this package (clients/python/generated), made by setup.sh.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "generated"))

from chat.v2 import chat_pb2 as pb  # noqa: E402
from chat.v2 import chat_pb2_grpc as pb_grpc  # noqa: E402

__all__ = ["pb", "pb_grpc"]
