"""Generate the gRPC stubs in this folder from proto/externalscaler.proto.

Run with `python -m scaler.rpc.generate` (or `make proto`). The generated modules are committed;
tests/test_proto_stubs.py fails when they no longer match the .proto file.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "externalscaler.proto"


def generate(out_root: Path = ROOT) -> None:
    from grpc_tools import protoc

    # Map proto/ onto the virtual path scaler/rpc so generated imports read `from scaler.rpc import ...`.
    args = [
        "grpc_tools.protoc",
        f"-Iscaler/rpc={PROTO.parent}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        "scaler/rpc/externalscaler.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
