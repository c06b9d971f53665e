"""Augmentation (fastcnn.augment): the C++ pixel kernels against NumPy references, the random
parameters' ranges, seeding through the DataLoader, and training with it (resume included)."""

import numpy as np
import pytest

import fastcnn
from fastcnn import _C, augment, data

# ---- references ---------------------------------------------------------------------------------


def crop_flip_reference(x, dy, dx, flip):
    """out[b, c, y, x] = in[b, c, y + dy, x + dx] (zero outside), then mirrored where flip."""
    B, C, H, W = x.shape
    out = np.zeros_like(x)
    for b in range(B):
        p = max(abs(int(dy[b])), abs(int(dx[b])), 1)
        padded = np.pad(x[b], ((0, 0), (p, p), (p, p)))
        window = padded[:, p + dy[b] : p + dy[b] + H, p + dx[b] : p + dx[b] + W]
        if window.shape == (C, H, W):
            out[b] = window
        else:  # shifted past the whole image
            out[b] = 0
        if flip[b]:
            out[b] = out[b][:, :, ::-1]
    return out


def resized_crop_reference(x, boxes, flip, oh, ow):
    """Bilinear at pixel centres, edges clamped, float32 arithmetic, rounded to nearest."""
    B, C, H, W = x.shape
    out = np.zeros((B, C, oh, ow), np.uint8)

    def line(start, extent, n, size):
        s = np.clip(start + (np.arange(n) + 0.5) * extent / n - 0.5, 0, size - 1)
        lo = np.minimum(s.astype(np.int64), size - 1)
        return lo, np.minimum(lo + 1, size - 1), (s - lo).astype(np.float32)

    for b in range(B):
        top, left, h, w = (float(v) for v in boxes[b])
        y0, y1, fy = line(top, h, oh, H)
        x0, x1, fx = line(left, w, ow, W)
        img = x[b].astype(np.float32)
        r0, r1 = img[:, y0], img[:, y1]
        a = r0[:, :, x0] + fx * (r0[:, :, x1] - r0[:, :, x0])
        c = r1[:, :, x0] + fx * (r1[:, :, x1] - r1[:, :, x0])
        v = a + fy[:, None] * (c - a)
        v = np.clip(v + np.float32(0.5), 0, 255).astype(np.uint8)
        out[b] = v[:, :, ::-1] if flip[b] else v
    return out


def pixels(rng, *shape):
    return rng.integers(0, 256, shape).astype(np.uint8)


# ---- kernels ------------------------------------------------------------------------------------

SHAPES = [(1, 1, 1, 1), (1, 1, 5, 7), (3, 3, 8, 8), (4, 1, 28, 28), (2, 3, 13, 6), (64, 1, 28, 28)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_crop_flip(shape, rng):
    x = pixels(rng, *shape)
    B, _, H, W = shape
    for limit in (0, 1, 4, max(H, W) + 2):  # up to shifts past the whole image
        dy = rng.integers(-limit, limit + 1, B).astype(np.int32)
        dx = rng.integers(-limit, limit + 1, B).astype(np.int32)
        flip = rng.integers(0, 2, B).astype(np.uint8)
        got = _C.augment_crop_flip(x, dy, dx, flip)
        np.testing.assert_array_equal(got, crop_flip_reference(x, dy, dx, flip))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("out_size", [(7, 9), None], ids=["7x9", "same"])
def test_resized_crop(shape, out_size, rng):
    x = pixels(rng, *shape)
    B, _, H, W = shape
    oh, ow = out_size or (H, W)
    h = rng.integers(1, H + 1, B)
    w = rng.integers(1, W + 1, B)
    boxes = np.stack([rng.integers(0, H - h + 1), rng.integers(0, W - w + 1), h, w], 1).astype(
        np.float32
    )
    flip = rng.integers(0, 2, B).astype(np.uint8)
    got = _C.augment_resized_crop(x, boxes, flip, oh, ow)
    want = resized_crop_reference(x, boxes, flip, oh, ow)
    assert got.shape == (B, shape[1], oh, ow)
    assert np.abs(got.astype(int) - want).max() <= 1  # a rounding at .5 may go either way
    assert (got == want).mean() > 0.999


def test_resized_crop_of_the_whole_image_is_the_image(rng):
    x = pixels(rng, 3, 2, 9, 11)
    boxes = np.tile(np.float32([0, 0, 9, 11]), (3, 1))
    np.testing.assert_array_equal(
        _C.augment_resized_crop(x, boxes, np.zeros(3, np.uint8), 9, 11), x
    )
    flipped = _C.augment_resized_crop(x, boxes, np.ones(3, np.uint8), 9, 11)
    np.testing.assert_array_equal(flipped, x[..., ::-1])


def test_kernels_do_not_depend_on_the_thread_count(rng, num_threads):
    x = pixels(rng, 64, 3, 32, 32)  # enough pixels to be split over the threads
    dy = rng.integers(-4, 5, 64).astype(np.int32)
    flip = rng.integers(0, 2, 64).astype(np.uint8)
    boxes = np.tile(np.float32([3, 2, 20, 25]), (64, 1))
    results = []
    for t in (1, 2):
        num_threads(t)
        results.append(
            (
                _C.augment_crop_flip(x, dy, dy[::-1].copy(), flip),
                _C.augment_resized_crop(x, boxes, flip, 32, 32),
            )
        )
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_name_the_problem(rng):
    x = pixels(rng, 2, 1, 4, 4)
    i32, u8 = np.zeros(2, np.int32), np.zeros(2, np.uint8)
    with pytest.raises(TypeError, match="x must be uint8"):
        _C.augment_crop_flip(x.astype(np.float32), i32, i32, u8)
    with pytest.raises(ValueError, match="one value per image"):
        _C.augment_crop_flip(x, np.zeros(3, np.int32), i32, u8)
    with pytest.raises(TypeError, match="dy must be int32"):
        _C.augment_crop_flip(x, i32.astype(np.int64), i32, u8)
    with pytest.raises(ValueError, match="height, width > 0"):
        _C.augment_resized_crop(x, np.float32([[0, 0, 0, 2], [0, 0, 2, 2]]), u8, 4, 4)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        _C.augment_resized_crop(x, np.zeros((2, 3), np.float32), u8, 4, 4)
    with pytest.raises(TypeError, match="uint8"):
        augment.RandomHorizontalFlip()(x.astype(np.float32), rng)
    for bad in (
        lambda: augment.RandomCrop(28, padding=-1),
        lambda: augment.RandomHorizontalFlip(p=1.5),
        lambda: augment.RandomResizedCrop(28, scale=(0.5, 0.2)),
        lambda: augment.RandomResizedCrop(28, ratio=(0, 1)),
    ):
        with pytest.raises(ValueError):
            bad()


# ---- transforms ---------------------------------------------------------------------------------


def test_random_crop_shifts_within_the_padding(rng):
    x = np.zeros((200, 1, 9, 9), np.uint8)
    x[:, :, 4, 4] = 255  # one bright pixel in the centre
    out = augment.RandomCrop(9, padding=2)(x, np.random.default_rng(0))
    pos = np.argwhere(out[:, 0] == 255)
    assert len(pos) == 200  # the pixel stays inside with a shift of at most 2
    assert set(pos[:, 1]) == set(range(2, 7)) and set(pos[:, 2]) == set(range(2, 7))
    smaller = augment.RandomCrop(5, padding=1)(x, rng)
    assert smaller.shape == (200, 1, 5, 5)


def test_flip_probability(rng):
    x = pixels(rng, 1000, 1, 2, 3)
    out = augment.RandomHorizontalFlip(p=0.3)(x, np.random.default_rng(1))
    flipped = np.all(out == x[..., ::-1], axis=(1, 2, 3)) & ~np.all(x == x[..., ::-1], (1, 2, 3))
    assert 0.25 < flipped.mean() < 0.35
    np.testing.assert_array_equal(augment.RandomHorizontalFlip(p=0)(x, rng), x)


def test_resized_crop_boxes_follow_scale_and_ratio(rng):
    t = augment.RandomResizedCrop(32, scale=(0.2, 0.9), ratio=(0.5, 2.0))
    boxes = t.boxes(5000, 40, 30, rng)
    top, left, h, w = boxes.T
    assert (
        np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= 40) and np.all(left + w <= 30)
    )
    whole = (h == 40) & (w == 30)  # ten misses in a row: the whole image (its ratio is allowed)
    assert 0 < whole.mean() < 0.05
    area, aspect = (h * w / (40 * 30))[~whole], (w / h)[~whole]
    assert area.min() > 0.18 and area.max() < 0.92  # rounding of the sides aside
    assert aspect.min() > 0.45 and aspect.max() < 2.2
    assert np.all(boxes == np.round(boxes))
    # An impossible request falls back to the central crop of the nearest ratio.
    narrow = augment.RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(3.0, 4.0))
    np.testing.assert_array_equal(narrow.boxes(2, 30, 30, rng), [[10, 0, 10, 30]] * 2)


# ---- through the DataLoader and fit -------------------------------------------------------------


@pytest.fixture(scope="module")
def grey():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (50, 12, 12)).astype(np.uint8)
    return data.ArrayDataset(images, rng.integers(0, 3, 50))


def batches(loader):
    return [x for x, _ in loader]


def test_loader_augments_repeatably(grey):
    t = data.Compose([data.RandomCrop(12, padding=2), data.RandomHorizontalFlip()])
    a = data.DataLoader(grey, 16, shuffle=True, seed=5, transform=t)
    b = data.DataLoader(grey, 16, shuffle=True, seed=5, transform=t)
    plain = batches(data.DataLoader(grey, 16, shuffle=True, seed=5))
    first = batches(a)
    for x, y in zip(first, batches(b)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, p) for x, p in zip(first, plain))
    second = batches(a)  # the next epoch draws anew
    assert any(not np.array_equal(x, y) for x, y in zip(first, second))
    b.set_epoch(1)  # and set_epoch resumes it
    for x, y in zip(second, batches(b)):
        np.testing.assert_array_equal(x, y)


def test_float_data_cannot_be_augmented():
    floats = data.ArrayDataset(np.zeros((4, 1, 5, 5), np.float32), np.zeros(4, np.int64))
    loader = data.DataLoader(floats, 2, transform=data.RandomHorizontalFlip())
    with pytest.raises(TypeError, match="uint8 pixels"):
        next(iter(loader))


def test_fit_with_augmentation_resumes_bit_for_bit(grey, tmp_path):
    from test_resume import assert_same_weights

    def run(epochs, **kw):
        fastcnn.manual_seed(0)
        model = fastcnn.models.seednet(in_channels=1, num_classes=3, image_size=12)
        t = data.Compose([data.RandomCrop(12, padding=2), data.RandomHorizontalFlip()])
        fastcnn.fit(model, grey, epochs=epochs, batch_size=16, transform=t, progress=False, **kw)
        return model

    whole = run(3)
    path = tmp_path / "aug.ckpt.safetensors"
    run(2, checkpoint=path)
    assert_same_weights(run(3, checkpoint=path, resume=True), whole)
    with pytest.raises(ValueError, match="augmentations differ"):
        fastcnn.manual_seed(0)
        model = fastcnn.models.seednet(in_channels=1, num_classes=3, image_size=12)
        fastcnn.fit(model, grey, epochs=3, batch_size=16, progress=False, checkpoint=path,
                    resume=True)  # fmt: skip
