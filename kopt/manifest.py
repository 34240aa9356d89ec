"""`manifest.json`: how each model file in a folder was made, so the files can be checked and rebuilt.

Each entry records the command and source, the file's SHA-256, size raw and gzipped, op counts, the
versions of kopt/TensorFlow/Keras/LiteRT, and figures measured on the file (e.g. its accuracy).

Example:

```python
tflite = kopt.convert.to_tflite(model, quantization=None, validate=False)
tflite.save("dense.tflite")
kopt.manifest.write(".", {"dense.tflite": kopt.manifest.entry(tflite, "dense.tflite", "example", "Dense")})
```
"""

import datetime
import gzip
import hashlib
import json
import os

__all__ = ["entry", "write"]


def versions():
    """`{package: version}` of what made a file: kopt, TensorFlow, Keras, LiteRT (and the ONNX tools if installed).

    Example:

    ```python
    print(kopt.manifest.versions()["tensorflow"])
    ```
    """
    from importlib import metadata

    found = {}
    for name in ("kopt-keras", "tensorflow", "keras", "ai-edge-litert", "tf2onnx", "onnxruntime"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def op_counts(content, filename):
    """`{op: count}` of a .tflite or .onnx file's graph.

    Args:
        content: the file's bytes.
        filename: its name; the suffix says .tflite or .onnx.
    """
    if filename.endswith(".onnx"):
        import onnx

        graph = onnx.load_from_string(bytes(content)).graph
        ops = [node.op_type for node in graph.node]
        return {op: ops.count(op) for op in sorted(set(ops))}
    from kopt.convert import inspect

    return dict(sorted(inspect(content).op_counts.items()))


def entry(content, filename, command, source, **metrics):
    """The manifest record of one file: what made it, its size, hash, ops and versions, and `metrics`.

    Args:
        content: the file's bytes.
        filename: its name (the suffix says .tflite or .onnx).
        command: the command that made it, e.g. "kopt demo".
        source: what it was made from, e.g. "digits CNN, pruned 80% + QAT".
        **metrics: figures measured on the file, e.g. `accuracy=0.97`.

    Example:

    ```python
    tflite = kopt.convert.to_tflite(model, quantization=None, validate=False)
    record = kopt.manifest.entry(tflite, "model.tflite", "python make.py", "a Dense model")
    ```
    """
    content = bytes(content)
    return {
        "command": command,
        "source": source,
        "sha256": hashlib.sha256(content).hexdigest(),
        "bytes": len(content),
        "gzip_bytes": len(gzip.compress(content, 9, mtime=0)),
        "op_counts": op_counts(content, filename),
        "versions": versions(),
        "made": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        **metrics,
    }


def write(folder, records):
    """Merges `records` ({filename: entry}) into `folder/manifest.json`, atomically; returns its path.

    Args:
        folder: the folder holding the files and the manifest.
        records: `{filename: entry(...)}`; entries of other files are kept.

    Example:

    ```python
    tflite = kopt.convert.to_tflite(model, quantization=None, validate=False)
    tflite.save("model.tflite")
    kopt.manifest.write(".", {"model.tflite": kopt.manifest.entry(tflite, "model.tflite", "example", "Dense")})
    ```
    """
    path = os.path.join(folder, "manifest.json")
    manifest = {}
    if os.path.exists(path):
        with open(path) as f:
            manifest = json.load(f)
    manifest.update(records)
    temporary = path + ".part"
    with open(temporary, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(temporary, path)
    return path
