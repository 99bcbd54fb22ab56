"""In-memory image sets: uint8 pixels decoded once, labels, class names."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class RaggedImages:
    """Images of differing sizes in one flat uint8 buffer (for folders of photos).

    ``pixels`` holds every image's H×W×C bytes back to back; ``offsets[i]`` is where image
    ``i`` starts and ``shapes[i]`` its (H, W, C). Indexing returns a zero-copy view.
    """

    def __init__(self, pixels: np.ndarray, offsets: np.ndarray, shapes: np.ndarray) -> None:
        if len(offsets) != len(shapes) + 1:
            raise ValueError("offsets must have one entry more than shapes")
        self.pixels, self.offsets, self.shapes = pixels, offsets, shapes

    @classmethod
    def from_list(cls, images: list[np.ndarray]) -> RaggedImages:
        shapes = np.array([im.shape for im in images], dtype=np.int64).reshape(-1, 3)
        offsets = np.zeros(len(images) + 1, dtype=np.int64)
        np.cumsum(shapes.prod(axis=1), out=offsets[1:])
        pixels = np.empty(int(offsets[-1]), dtype=np.uint8)
        for i, im in enumerate(images):
            pixels[offsets[i] : offsets[i + 1]] = im.reshape(-1)
        return cls(pixels, offsets, shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> np.ndarray:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.pixels[start:stop].reshape(tuple(self.shapes[index]))

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


def stack_images(images: list[np.ndarray]) -> np.ndarray | RaggedImages:
    """One N×H×W×C array when all shapes agree, else ragged storage."""
    if images and all(im.shape == images[0].shape for im in images):
        return np.stack(images)
    return RaggedImages.from_list(images)


@dataclass(frozen=True)
class ImageSet:
    """One split of a data set.

    ``images`` is uint8 N×H×W×C (C = 1 gray or 3 RGB) or :class:`RaggedImages`;
    ``labels`` int64 class indices into ``classes``.
    """

    images: np.ndarray | RaggedImages
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) when every image has the same shape, else None."""
        if isinstance(self.images, np.ndarray):
            return tuple(self.images.shape[1:])  # type: ignore[return-value]
        return None

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as a uint8 N×C×H×W tensor and labels as int64, copied into memory (the
        cache is a read-only memory map); needs a common shape."""
        import torch  # here, so listing and verifying data never pays for importing torch

        if not isinstance(self.images, np.ndarray):
            raise ValueError("images differ in size; resize them before stacking into a tensor")
        images = torch.from_numpy(np.array(self.images)).permute(0, 3, 1, 2)
        return images.contiguous(), torch.from_numpy(np.array(self.labels, dtype=np.int64))
