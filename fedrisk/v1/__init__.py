"""Generated gRPC/protobuf stubs of the ``fedrisk.v1`` API (``protos/fedrisk/v1/scoring.proto``).

Regenerate from the repository root with::

    python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/fedrisk/v1/scoring.proto

``tests/test_scoring_proto.py`` checks that the committed files match.
"""
