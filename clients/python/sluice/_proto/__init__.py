"""Generated protobuf and gRPC stubs of ``proto/sluice/v1/ingest.proto`` (see ``scripts/gen_stubs.py``)."""
