"""Standard Python gRPC clients against bitsd, run by tests/e2e/python.rs.

probe.py TARGET [--token T] COMMAND
  TARGET      unix:PATH or HOST:PORT (TCP)
  authorities ListJobs with the default channel options and with each :authority a client may send
  health      Health.Check for "", bits.v1.Bits (SERVING) and an unknown service (NOT_FOUND)
  reflection  v1alpha (grpcio-reflection) and v1: list services, fetch bits.v1.Bits' file
  watch       Health.Watch: prints each status as it comes, then "ended" when the stream ends
  refused     health and reflection calls all fail UNAUTHENTICATED (TCP without the token)

Each command prints what it saw and exits 1 on anything unexpected.
"""

import sys
import urllib.parse

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bits.v1 import bits_pb2, bits_pb2_grpc

V1_INFO = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def fail(message):
    print(f"FAILED: {message}", flush=True)
    sys.exit(1)


def channel(target, options=()):
    return grpc.insecure_channel(target, options=list(options))


def authorities(target):
    path = target[len("unix:"):]
    cases = [
        ("default", None),
        ("localhost", "localhost"),
        ("empty", ""),
        ("path", path),
        ("percent-encoded", urllib.parse.quote(path, safe="")),
    ]
    for name, authority in cases:
        options = [] if authority is None else [("grpc.default_authority", authority)]
        with channel(target, options) as ch:
            stub = bits_pb2_grpc.BitsStub(ch)
            # Two calls on one connection: the second one's header block refers to the first's.
            for _ in range(2):
                stub.ListJobs(bits_pb2.ListJobsRequest(), timeout=10)
        print(f"authority {name}: ok", flush=True)


def health(target, metadata):
    with channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ["", "bits.v1.Bits"]:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=10
            )
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            print(f"health {service!r}: {status}", flush=True)
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), metadata=metadata, timeout=10)
            fail("an unknown service was answered")
        except grpc.RpcError as e:
            print(f"health 'no.Such': {e.code().name}", flush=True)


def reflect(ch, metadata, version, requests):
    """The responses of one ServerReflectionInfo stream."""
    if version == "v1alpha":
        info = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo
    else:
        # grpcio-reflection ships only v1alpha's stubs; v1's messages are the same on the wire.
        info = ch.stream_stream(
            V1_INFO,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
    return list(info(iter(requests), metadata=metadata, timeout=10))


def parse(reply):
    """The file descriptors of a reflection reply."""
    if reply.HasField("error_response"):
        fail(f"reflection: {reply.error_response}")
    files = []
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        files.append(proto)
    return files


def reflection(target, metadata):
    with channel(target) as ch:
        for version in ["v1alpha", "v1"]:
            listed, by_symbol = reflect(
                ch,
                metadata,
                version,
                [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="bits.v1.Bits"),
                ],
            )
            services = sorted(s.name for s in listed.list_services_response.service)
            print(f"reflection {version} services: {' '.join(services)}", flush=True)
            files = parse(by_symbol)
            # Its imports by name, as grpcurl and every other reflection client asks for them.
            missing = {d for f in files for d in f.dependency} - {f.name for f in files}
            requests = [reflection_pb2.ServerReflectionRequest(file_by_filename=n) for n in missing]
            for reply in reflect(ch, metadata, version, requests):
                files += parse(reply)
            pool = descriptor_pool.DescriptorPool()
            # Dependencies first, as a pool needs them.
            for proto in sorted(files, key=lambda f: f.name != "google/protobuf/timestamp.proto"):
                pool.Add(proto)
            service = pool.FindServiceByName("bits.v1.Bits")
            names = sorted(f.name for f in files)
            print(
                f"reflection {version} files: {' '.join(names)}; "
                f"bits.v1.Bits has {len(service.methods)} methods, "
                f"CreateJob takes {service.methods_by_name['CreateJob'].input_type.full_name}",
                flush=True,
            )


def watch(target, metadata):
    with channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), metadata=metadata):
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                print(f"watch: {status}", flush=True)
        except grpc.RpcError as e:
            print(f"watch: error {e.code().name}", flush=True)
        print("watch: ended", flush=True)


def refused(target):
    with channel(target) as ch:
        calls = [
            ("health", lambda: health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10)),
            ("reflection v1alpha", lambda: reflect(
                ch, (), "v1alpha", [reflection_pb2.ServerReflectionRequest(list_services="")])),
            ("reflection v1", lambda: reflect(
                ch, (), "v1", [reflection_pb2.ServerReflectionRequest(list_services="")])),
        ]
        for name, call in calls:
            try:
                call()
                fail(f"{name} answered without a token")
            except grpc.RpcError as e:
                trailers = dict(e.trailing_metadata() or ())
                print(f"{name}: {e.code().name} {trailers.get('bits-code')}", flush=True)


def main():
    args = sys.argv[1:]
    metadata = ()
    if "--token" in args:
        at = args.index("--token")
        metadata = (("authorization", f"Bearer {args[at + 1]}"),)
        del args[at:at + 2]
    target, command = args
    commands = {
        "authorities": lambda: authorities(target),
        "health": lambda: health(target, metadata),
        "reflection": lambda: reflection(target, metadata),
        "watch": lambda: watch(target, metadata),
        "refused": lambda: refused(target),
    }
    commands[command]()


if __name__ == "__main__":
    main()
