"""The project's own protobuf API (control plane ↔ ext_proc), compiled with grpcio-tools.

Generated modules are not committed: they are (re)built from the `.proto` files on first
import when missing or older than their source, so an editable install and a wheel build
behave the same. Envoy's own APIs come from the `xds-protos` wheel, not from here.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _stale(proto: Path) -> bool:
    outputs = [proto.with_name(proto.stem + suffix)
               for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")]
    return any(not o.exists() or o.stat().st_mtime < proto.stat().st_mtime for o in outputs)


def build(force: bool = False) -> None:
    """Compile every protos/*.proto that changed (also run by the setup build step)."""
    protos = [p for p in sorted(_HERE.glob("*.proto")) if force or _stale(p)]
    if not protos:
        return
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).resolve().parent / "_proto")
    root = _HERE.parent
    for proto in protos:
        args = [
            "protoc",
            f"-I{root}",
            f"-I{include}",
            f"--python_out={root}",
            f"--grpc_python_out={root}",
            f"--pyi_out={root}",
            str(proto.relative_to(root)),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {proto}")


build()
