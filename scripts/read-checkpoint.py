#!/usr/bin/env python3
"""Read a Flipout3D checkpoint with Hugging Face's `safetensors`, check its digest and print its contents.

Usage: scripts/read-checkpoint.py runs/demo/checkpoint.safetensors [--json]

Shows that checkpoints are plain safetensors files: the metadata (model, U-Net, training and
patch configuration, preprocessing plan, plugin ids, versions and SHA-256, seed, epoch) and every
tensor with its shape, mean and standard deviation. Checks the content digest (metadata
`flipout3d.digest`) with hashlib, independently of flipout: it prints `digest: ok`, or says what
is wrong and exits with status 1. Installs `safetensors` and `numpy` with pip if they are missing.

The digest is the SHA-256 of (u64 = unsigned 64-bit little-endian, strings UTF-8, keys and tensor
names sorted by their UTF-8 bytes):
    b"flipout3d-digest-1\\n"
    u64(metadata entries other than flipout3d.digest), then for each: u64(len) key u64(len) value
    u64(tensors), then for each: u64(len) name u64(rank) u64(dim)... u64(data bytes) data
"""
import hashlib
import json
import struct
import subprocess
import sys

DIGEST_KEY = "flipout3d.digest"


def ensure(module, package):
    try:
        __import__(module)
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", package])


def content_digest(metadata, tensors):
    """metadata: {str: str}; tensors: {name: (shape, raw little-endian bytes)} -> hex digest."""
    h = hashlib.sha256()

    def u64(v):
        h.update(struct.pack("<Q", v))

    def string(s):
        b = s.encode("utf-8")
        u64(len(b))
        h.update(b)

    h.update(b"flipout3d-digest-1\n")
    keys = sorted((k for k in metadata if k != DIGEST_KEY), key=lambda k: k.encode("utf-8"))
    u64(len(keys))
    for k in keys:
        string(k)
        string(metadata[k])
    u64(len(tensors))
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        shape, data = tensors[name]
        string(name)
        u64(len(shape))
        for d in shape:
            u64(d)
        u64(len(data))
        h.update(data)
    return h.hexdigest()


def check_digest(path):
    """'ok', or why the file's digest is missing or wrong (the file read by the format's layout)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    metadata = header.get("__metadata__") or {}
    tensors = {name: (info["shape"], data[info["data_offsets"][0]:info["data_offsets"][1]])
               for name, info in header.items() if name != "__metadata__"}
    stored = metadata.get(DIGEST_KEY)
    if stored is None:
        return f"missing: no {DIGEST_KEY} metadata"
    actual = content_digest(metadata, tensors)
    return "ok" if actual == stored else f"mismatch: the file records {stored[:16]}..., its content gives {actual[:16]}..."


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ensure("numpy", "numpy")
    ensure("safetensors", "safetensors")
    from safetensors import safe_open

    path = sys.argv[1]
    out = {"metadata": {}, "tensors": {}, "digest": check_digest(path)}
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        for k, v in meta.items():
            try:
                out["metadata"][k] = json.loads(v)
            except ValueError:
                out["metadata"][k] = v
        for name in f.keys():
            t = f.get_tensor(name)
            out["tensors"][name] = {"shape": list(t.shape), "dtype": str(t.dtype),
                                    "mean": float(t.mean()) if t.size else 0.0, "std": float(t.std()) if t.size else 0.0}
    if "--json" in sys.argv:
        print(json.dumps(out, sort_keys=True))
    else:
        for k, v in sorted(out["metadata"].items()):
            print(f"{k}: {json.dumps(v)[:200]}")
        for name, t in sorted(out["tensors"].items()):
            print(f"{name:40s} {str(t['shape']):24s} {t['dtype']:8s} mean {t['mean']:+.5f} std {t['std']:.5f}")
        print(f"digest: {out['digest']}")
    if out["digest"] != "ok":
        print(f"{path}: content digest {out['digest']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
