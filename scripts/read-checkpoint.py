#!/usr/bin/env python3
"""Read a Flipout3D checkpoint with Hugging Face's `safetensors` and print its contents.

Usage: scripts/read-checkpoint.py runs/demo/checkpoint.safetensors [--json]

Shows that checkpoints are plain safetensors files: the metadata (model and training
configuration, plugin ids, versions and SHA-256, seed, epoch) and every tensor with its shape,
mean and standard deviation. Installs `safetensors` and `numpy` with pip if they are missing.
"""
import json
import subprocess
import sys


def ensure(module, package):
    try:
        __import__(module)
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", package])


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ensure("numpy", "numpy")
    ensure("safetensors", "safetensors")
    from safetensors import safe_open

    path = sys.argv[1]
    out = {"metadata": {}, "tensors": {}}
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
                                    "mean": float(t.mean()), "std": float(t.std())}
    if "--json" in sys.argv:
        print(json.dumps(out, sort_keys=True))
        return
    for k, v in sorted(out["metadata"].items()):
        print(f"{k}: {json.dumps(v)[:200]}")
    for name, t in sorted(out["tensors"].items()):
        print(f"{name:40s} {str(t['shape']):24s} {t['dtype']:8s} mean {t['mean']:+.5f} std {t['std']:.5f}")


if __name__ == "__main__":
    main()
