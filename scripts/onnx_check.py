#!/usr/bin/env python3
"""Run onnx.checker.check_model (full_check=False) on one or more ONNX files.

usage: onnx_check.py [--ignore-external] FILE [FILE ...]

For each FILE prints one line, "OK <file>" or "FAIL <file>: <first line of the checker's message>".
Exit status: 0 if every file passes, 1 if any fails, 2 on a usage error or when onnx is missing.

External data: if every external-data file a model refers to is present, the model is checked
from its path (so the checker also sees those files). If any is missing (graph-only models), or
with --ignore-external, the proto is loaded with load_external_data=False and checked as a proto.
onnx's checker still stat()s each location, relative to the working directory for a proto, so
that check runs in a temporary directory holding an empty placeholder for every location; the
line then reads "OK <file> (external data not checked)". Locations that are absolute or contain
".." get no placeholder and so still fail.
"""
import os
import sys
import tempfile


def external_locations(model):
    from onnx import TensorProto

    def tensors(graph):
        yield from graph.initializer
        for s in graph.sparse_initializer:
            yield s.values
            yield s.indices
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from tensors(a.g)
                for g in a.graphs:
                    yield from tensors(g)

    for t in tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    yield e.value


def check(path, ignore_external):
    import onnx

    model = onnx.load(path, load_external_data=False)
    locations = set(external_locations(model))
    base = os.path.dirname(os.path.abspath(path))
    if not locations:
        onnx.checker.check_model(model, full_check=False)
        return ""
    if not ignore_external and all(os.path.exists(os.path.join(base, loc)) for loc in locations):
        onnx.checker.check_model(path, full_check=False)
        return ""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="onnx_check_") as tmp:
        for loc in locations:
            parts = loc.replace("\\", "/").split("/")
            if os.path.isabs(loc) or ".." in parts:
                continue
            dest = os.path.join(tmp, *parts)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            open(dest, "ab").close()
        os.chdir(tmp)
        try:
            onnx.checker.check_model(model, full_check=False)
        finally:
            os.chdir(cwd)
    return " (external data not checked)"


def main(argv):
    args = argv[1:]
    ignore_external = "--ignore-external" in args
    files = [a for a in args if a != "--ignore-external"]
    if not files or any(f.startswith("-") for f in files):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        print(f"onnx_check.py: cannot import onnx ({e}); on Debian: apt-get install python3-onnx", file=sys.stderr)
        return 2
    ok = True
    for f in files:
        try:
            note = check(f, ignore_external)
            print(f"OK {f}{note}")
        except Exception as e:  # checker errors, protobuf decode errors, missing files
            ok = False
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"FAIL {f}: {type(e).__name__}: {msg}")
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
