"""The data doctor: checks an image folder before training on it (`fastcnn doctor DIR`,
`fastcnn.data.doctor(root)`).

It reports the images per class and the imbalance, files that cannot be read or are truncated
(named), exact duplicates (same bytes) and near duplicates (the same 8x8 average hash of the
grey image, a few bits apart), above all across the train/val split where they leak test images
into training, the sizes, colour modes and aspect ratios, the images smaller than the size
training will resize them to, and what to do about each. Files are decoded in threads (Pillow
releases the GIL), JPEGs at a reduced scale: only their header and a thumbnail are needed.
"""

from __future__ import annotations

import collections
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

__all__ = ["doctor"]

NEAR_BITS = 6  # average hashes at most this many bits apart (of 64) are candidates...
NEAR_LEVELS = 6.0  # ...and near duplicates when their 16x16 grey thumbnails differ by at most
# this many grey levels (of 255) on average: a JPEG re-encoded at quality 50 differs by ~2,
# distinct pictures by tens, however alike their coarse hashes.


def _splits(root):
    """{split name: folder} for a root with train/ and val/ or test/, else {"": root}."""
    subs = {n: os.path.join(root, n) for n in ("train", "val", "test")}
    if os.path.isdir(subs["train"]) and any(os.path.isdir(subs[n]) for n in ("val", "test")):
        return {n: p for n, p in subs.items() if os.path.isdir(p)}
    return {"": root}


def _files(folder):
    """(class name, path) of every image file under folder's class sub-folders."""
    from .data import IMAGE_EXTENSIONS, _visible

    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not (entry.is_dir() and _visible(entry.name)):
            continue
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            for f in sorted(filenames):
                if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS):
                    out.append((entry.name, os.path.join(dirpath, f)))
    return out


def _inspect(path):
    """(sha256 of the bytes, (w, h), mode, (64-bit average hash, 16x16 grey thumbnail) or None,
    error or None)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        digest = hashlib.sha256(raw).hexdigest()
    except OSError as e:
        return None, None, None, None, f"cannot read: {e}"
    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
            img.draft("L", (32, 32))  # JPEG: decode at 1/2-1/8 scale, enough for a hash
            img.load()  # a truncated file fails here
            grey = img.convert("L")
            thumb = np.asarray(grey.resize((16, 16), Image.BILINEAR), np.float32)
            small = np.asarray(grey.resize((8, 8), Image.BILINEAR), np.float32)
        bits = (small > small.mean()).reshape(-1)
        ahash = int("".join("1" if b else "0" for b in bits), 2)
        return digest, size, mode, (ahash, thumb), None
    except Exception as e:  # noqa: BLE001  Pillow raises many kinds for a bad file
        return digest, None, None, None, f"unreadable image ({type(e).__name__}: {e})"


def doctor(root, image_size=64, workers=None) -> dict:
    """Check an image folder (one sub-folder per class, or train/ and val/ or test/ each with
    them) and return the findings; `report["text"]` is the report `fastcnn doctor` prints.

    Args:
        root: the folder.
        image_size: the side training will resize to (64 is `fastcnn train`'s default for
            folders); smaller images are counted.
        workers: decoding threads (default: the cores).

    Returns:
        A dict: "images", "classes" ({split: {class: count}}), "imbalance" (largest class over
        smallest), "unreadable" ([(path, reason)]), "exact_duplicates" and "near_duplicates"
        (lists of path groups), "leaks" (groups spanning the train/val split), "sizes"
        (min/median/max width and height), "modes" ({mode: count}), "aspect_ratios"
        (min/median/max), "too_small" (count), "advice" (list of sentences) and "text".
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"doctor: {root} is not a folder")
    splits = _splits(root)
    entries = [
        (split, cls, path) for split, folder in splits.items() for cls, path in _files(folder)
    ]
    if not entries:
        raise ValueError(f"doctor: no images in class sub-folders of {root}")
    with ThreadPoolExecutor(workers or os.cpu_count() or 2) as pool:
        results = list(pool.map(_inspect, [p for _, _, p in entries]))

    counts = {s: collections.Counter() for s in splits}
    unreadable, sizes, modes = [], [], collections.Counter()
    by_digest, hashes = collections.defaultdict(list), []
    for (split, cls, path), (digest, size, mode, ahash, error) in zip(entries, results):
        counts[split][cls] += 1
        if digest is not None:
            by_digest[digest].append((split, path))
        if error is not None:
            unreadable.append((path, error))
            continue
        sizes.append(size)
        modes[mode] += 1
        hashes.append((ahash, split, path))

    exact = [g for g in by_digest.values() if len(g) > 1]
    exact_paths = {p for g in exact for _, p in g}
    near = _near_groups([h for h in hashes if h[2] not in exact_paths])
    leaks = [g for g in exact + near if len({s for s, _ in g}) > 1]
    totals = collections.Counter()
    for c in counts.values():
        totals.update(c)
    imbalance = max(totals.values()) / max(min(totals.values()), 1)
    wh = np.array(sizes, np.float64).reshape(-1, 2)
    aspect = wh[:, 0] / wh[:, 1] if len(wh) else np.zeros(0)
    small = int(np.sum(wh.min(axis=1) < image_size)) if len(wh) else 0

    advice = []
    if unreadable:
        files = "unreadable file" if len(unreadable) == 1 else f"{len(unreadable)} unreadable files"
        advice.append(f"remove or replace the {files} named above "
                      "(ImageFolder(skip_bad=True) skips them)")  # fmt: skip
    if leaks:
        them = "an image (or near copy) is" if len(leaks) == 1 else (
            f"{len(leaks)} images (or near copies) are")  # fmt: skip
        advice.append(f"{them} in both splits: move or delete one copy of each, or the "
                      "validation accuracy is too optimistic")  # fmt: skip
    if exact or near:
        advice.append("duplicates weigh those images twice in training; delete the extra copies")
    if imbalance >= 3:
        advice.append(f"the classes are imbalanced ({imbalance:.1f}:1): collect more of the small "
                      "ones, or expect a bias towards the large ones")  # fmt: skip
    if small:
        advice.append(
            f"{small} images are smaller than {image_size}x{image_size} and will be upscaled: "
            "train at a smaller --image-size, or find larger images"
        )
    if len(modes) > 1:
        advice.append("mixed colour modes are converted to the --channels asked for (fine)")
    if not advice:
        advice.append("nothing to fix")

    report = {
        "images": len(entries),
        "classes": {s or "all": dict(sorted(c.items())) for s, c in counts.items()},
        "imbalance": imbalance,
        "unreadable": unreadable,
        "exact_duplicates": [[p for _, p in g] for g in exact],
        "near_duplicates": [[p for _, p in g] for g in near],
        "leaks": [[p for _, p in g] for g in leaks],
        "sizes": _spread(wh),
        "modes": dict(modes),
        "aspect_ratios": _spread(aspect),
        "too_small": small,
        "advice": advice,
    }
    report["text"] = _text(root, report, image_size)
    return report


def _near_groups(hashes):
    """Groups of ((hash, thumbnail), split, path) that are near copies (union-find over the
    pairs; hashes bucketed by their four 16-bit quarters first, so that only candidates are
    compared: two hashes a few bits apart agree on at least one quarter)."""
    parent = list(range(len(hashes)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    buckets = collections.defaultdict(list)
    for i, ((h, _), _, _) in enumerate(hashes):
        for q in range(4):
            buckets[(q, (h >> (16 * q)) & 0xFFFF)].append(i)
    for members in buckets.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, j = members[a], members[b]
                (hi, ti), (hj, tj) = hashes[i][0], hashes[j][0]
                if bin(hi ^ hj).count("1") <= NEAR_BITS and np.abs(ti - tj).mean() <= NEAR_LEVELS:
                    parent[find(i)] = find(j)
    groups = collections.defaultdict(list)
    for i, (_, split, path) in enumerate(hashes):
        groups[find(i)].append((split, path))
    return [sorted(g, key=lambda e: e[1]) for g in groups.values() if len(g) > 1]


def _spread(values):
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return None
    return {
        "min": values.min(axis=0).tolist(),
        "median": np.median(values, axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
    }


def _text(root, r, image_size):
    lines = [f"{root}: {r['images']} images"]
    for split, classes in r["classes"].items():
        lines.append(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in classes.items()))
    lines.append(f"  class imbalance (largest / smallest): {r['imbalance']:.2f}")
    if r["sizes"]:
        (w0, h0), (wm, hm), (w1, h1) = r["sizes"]["min"], r["sizes"]["median"], r["sizes"]["max"]
        lines.append(
            f"  sizes (w x h): min {w0:.0f}x{h0:.0f}, median {wm:.0f}x{hm:.0f}, "
            f"max {w1:.0f}x{h1:.0f}; smaller than {image_size}: {r['too_small']}"
        )
        a = r["aspect_ratios"]
        lines.append(f"  aspect ratios (w / h): min {a['min']:.2f}, median {a['median']:.2f}, "
                     f"max {a['max']:.2f}")  # fmt: skip
    lines.append("  colour modes: " + ", ".join(f"{m} {n}" for m, n in sorted(r["modes"].items())))
    for title, key in (("unreadable", "unreadable"), ("exact duplicates", "exact_duplicates"),
                       ("near duplicates", "near_duplicates"),
                       ("across the train/val split (leakage)", "leaks")):  # fmt: skip
        items = r[key]
        lines.append(f"  {title}: {len(items)}")
        for item in items[:20]:
            if key == "unreadable":
                lines.append(f"    {item[0]}: {item[1]}")
            else:  # a group of copies: the first few
                more = f" (and {len(item) - 4} more)" if len(item) > 4 else ""
                lines.append("    " + " = ".join(item[:4]) + more)
        if len(items) > 20:
            lines.append(f"    ... and {len(items) - 20} more")
    lines.append("what to do:")
    lines += [f"  - {a}" for a in r["advice"]]
    return "\n".join(lines)
