"""ImageFolder's decoded-pixel cache: the time to load a folder of JPEG photos decoding every
file (no cache, and the first load with the cache, which also writes it) against loading it
again from the cache. Prints JSON lines, then a table.

    python bench/image_cache.py                  # 2,000 JPEGs of 320x240, resized to 64x64
    python bench/image_cache.py --images 10000 --size 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import harness  # first: puts this checkout's fastcnn on sys.path when it is built in place
import numpy as np
from PIL import Image


def make_folder(root, n, rng):
    """n smooth 320x240 pictures (gradients, as photos are; noise JPEGs are unusually large)."""
    y, x = np.mgrid[0:240, 0:320] / 320.0
    for i in range(n):
        cls = os.path.join(root, "ab"[i % 2])
        os.makedirs(cls, exist_ok=True)
        c = rng.uniform(0, 8, (3, 3))
        img = np.stack([np.sin(c[k, 0] * x + c[k, 1] * y + c[k, 2]) for k in range(3)], -1)
        Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(
            os.path.join(cls, f"{i}.jpg"), quality=90
        )


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=64, help="image_size of the ImageFolder")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from fastcnn import data

    with tempfile.TemporaryDirectory() as work:
        root, cache = os.path.join(work, "photos"), os.path.join(work, "cache")
        make_folder(root, args.images, np.random.default_rng(0))
        times = {"decode": [], "first (decode + write)": [], "cached": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            data.ImageFolder(root, args.size, cache=False)
            times["decode"].append(time.perf_counter() - t)
        for _ in range(args.repeats):
            for f in os.listdir(cache) if os.path.isdir(cache) else []:
                os.remove(os.path.join(cache, f))
            t = time.perf_counter()
            first = data.ImageFolder(root, args.size, cache=cache)
            times["first (decode + write)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            again = data.ImageFolder(root, args.size, cache=cache)
            times["cached"].append(time.perf_counter() - t)
            assert again.cache_hit and not first.cache_hit
        rows = []
        for name, ts in times.items():
            med = statistics.median(ts)
            harness.emit({"bench": "image_cache", "load": name, "images": args.images,
                          "image_size": args.size, "median_s": med})  # fmt: skip
            rows.append([name, med, statistics.median(times["decode"]) / med])
        harness.print_table(
            f"loading {args.images} JPEGs (320x240) as ImageFolder(image_size={args.size})",
            ["load", "median s", "x faster than decoding"],
            rows,
        )


if __name__ == "__main__":
    main()
