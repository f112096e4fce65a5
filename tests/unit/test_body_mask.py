"""Negative crop centres from the background inside the body: CT air (at the image's minimum) is left out."""

from __future__ import annotations

import numpy as np

from common.volume import body_mask, class_voxel_indices


def _ct_like() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((1, 20, 20, 10), np.float32)  # air, clipped to the minimum and scaled to 0
    image[0, 4:16, 4:16, :] = 0.4  # the body
    label = np.zeros((1, 20, 20, 10), np.uint8)
    label[0, 8:10, 8:10, 4:6] = 1
    return image, label


def test_negative_centres_stay_inside_the_body_and_counts_stay_the_labels() -> None:
    image, label = _ct_like()
    body = body_mask(image, label[0])
    assert body is not None and body.sum() == 12 * 12 * 10
    (bg, fg), counts = class_voxel_indices(label, 2, image.nbytes * 100, body=body)
    flat = image.reshape(-1)
    assert bg.size == 12 * 12 * 10 - 8 and (flat[bg] > 0).all() and (label.reshape(-1)[bg] == 0).all()
    assert counts == (20 * 20 * 10 - 8, 8)  # the label's counts, air included
    assert fg.size == 8


def test_any_channel_above_its_minimum_is_body() -> None:
    image, label = _ct_like()
    second = np.zeros_like(image)
    second[0, 0, 0, 0] = 5.0  # one voxel of air bright in the second channel only
    body = body_mask(np.concatenate([image, second]), label[0])
    assert body is not None and body[0, 0, 0] and body.sum() == 12 * 12 * 10 + 1


def test_an_image_at_its_minimum_almost_everywhere_keeps_the_whole_background() -> None:
    image = np.zeros((1, 20, 20, 10), np.float32)
    image[0, 0, 0, :3] = 1.0  # 3 of 3992 background voxels above the minimum: too few to crop around
    label = np.zeros((1, 20, 20, 10), np.uint8)
    label[0, 8:10, 8:10, 4:6] = 1
    assert body_mask(image, label[0]) is None
