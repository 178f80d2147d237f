"""Probes a chat relay the way grpcurl does, and prints what it found as one JSON object.

- `grpcurl list`: the services, through server reflection, in both protocol versions
  (grpc.reflection.v1 and the older v1alpha that older grpcurl releases speak);
- `grpcurl describe SYMBOL`: the methods of a service, from the file that defines it;
- `grpcurl ... grpc.health.v1.Health/Check`: the serving status of the server and of
  the chat service;
- what a chat.v1 client's first call (`chat.v1.AuthService/CreateChallenge`) gets.

grpcio-reflection ships the v1alpha messages only; v1 has the same messages under another
package, so both are spoken with the same classes on their own method paths.

Usage: probe.py HOST:PORT
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION_METHODS = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}
TIMEOUT_SECONDS = 10


def reflect(channel: grpc.Channel, version: str, request) -> reflection_pb2.ServerReflectionResponse:
    """Sends one reflection request and returns the answer, raising on a reflection error."""
    call = channel.stream_stream(
        REFLECTION_METHODS[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    response = next(iter(call(iter([request]), timeout=TIMEOUT_SECONDS)))
    if response.HasField("error_response"):
        raise RuntimeError(f"reflection {version}: {response.error_response.error_message}")
    return response


def list_services(channel: grpc.Channel, version: str) -> list[str]:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = reflect(channel, version, request)
    return sorted(service.name for service in response.list_services_response.service)


def describe_service(channel: grpc.Channel, version: str, service: str) -> dict:
    """The methods of `service` (a full name such as chat.v2.ChatService)."""
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    response = reflect(channel, version, request)
    for encoded in response.file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(encoded)
        for candidate in file.service:
            if f"{file.package}.{candidate.name}" == service:
                return {
                    "file": file.name,
                    "methods": {
                        method.name: {
                            "input": method.input_type.lstrip("."),
                            "output": method.output_type.lstrip("."),
                            "client_streaming": method.client_streaming,
                            "server_streaming": method.server_streaming,
                        }
                        for method in candidate.method
                    },
                }
    raise RuntimeError(f"reflection {version}: no file defines {service}")


def health(channel: grpc.Channel, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def v1_status(channel: grpc.Channel) -> str:
    """What a chat.v1 client's first call gets from a relay that serves chat.v2 only."""
    call = channel.unary_unary("/chat.v1.AuthService/CreateChallenge")
    try:
        call(b"", timeout=TIMEOUT_SECONDS)
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: probe.py HOST:PORT", file=sys.stderr)
        return 2
    with grpc.insecure_channel(sys.argv[1]) as channel:
        report = {
            "list": {version: list_services(channel, version) for version in REFLECTION_METHODS},
            "describe": {
                version: describe_service(channel, version, "chat.v2.ChatService")
                for version in REFLECTION_METHODS
            },
            "health": {service: health(channel, service) for service in ("", "chat.v2.ChatService")},
            "chat_v1": v1_status(channel),
        }
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
