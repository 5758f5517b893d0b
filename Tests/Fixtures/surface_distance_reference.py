#!/usr/bin/env python3
"""Independent reference for the evaluation tests: scipy's exact EDT and MONAI's HD95 recipe.

Usage: surface_distance_reference.py SPEC.json
SPEC: {"shape": [D, H, W], "spacing": [sd, sh, sw], "a": "a.u8", "b": "b.u8", "edt_out": "edt.f64"}
a, b: raw uint8 masks (C order). Writes the EDT of "a is a feature" (distance to the nearest
nonzero voxel of a) as float64 to edt_out, and prints {"hd95": ...} (null if one mask is empty).
"""
import json
import sys

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt

spec = json.load(open(sys.argv[1]))
shape = tuple(spec["shape"])
spacing = spec["spacing"]
a = np.fromfile(spec["a"], dtype=np.uint8).reshape(shape).astype(bool)
b = np.fromfile(spec["b"], dtype=np.uint8).reshape(shape).astype(bool)
distance_transform_edt(~a, sampling=spacing).astype(np.float64).tofile(spec["edt_out"])


def surface(m):
    # MONAI get_mask_edges: m ^ binary_erosion(m) (6-connectivity, border counts as background).
    return m ^ binary_erosion(m)


def directed(x, y):
    # MONAI get_surface_distance + compute_percent_hausdorff_distance(percentile=95).
    d = distance_transform_edt(~surface(y), sampling=spacing)
    return np.percentile(d[surface(x)], 95)


if not a.any() and not b.any():
    hd = 0.0
elif not a.any() or not b.any():
    hd = None
else:
    hd = float(max(directed(a, b), directed(b, a)))
print(json.dumps({"hd95": hd}))
