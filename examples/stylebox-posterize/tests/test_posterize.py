"""What posterize itself promises, beyond the contract."""

import numpy as np
from PIL import Image
from stylebox_posterize import Posterize, PosterizeParams

from stylebox.plugins.api import Runtime
from stylebox.testing import RecordingContext


def test_two_bits_leave_four_levels_per_channel(
    stylebox_runtime: Runtime,
    stylebox_context: RecordingContext,
    stylebox_image,  # noqa: ANN001
) -> None:
    plugin = Posterize(PosterizeParams(bits=2), stylebox_runtime)
    result = plugin.process(stylebox_image((64, 48)), stylebox_context)
    for channel in np.asarray(result).reshape(-1, 3).T:
        assert len(np.unique(channel)) <= 4


def test_flat_image_stays_flat(
    stylebox_runtime: Runtime, stylebox_context: RecordingContext
) -> None:
    plugin = Posterize(PosterizeParams(bits=1, autocontrast=True), stylebox_runtime)
    result = plugin.process(Image.new("RGB", (8, 8), (200, 10, 90)), stylebox_context)
    assert set(np.unique(np.asarray(result)).tolist()) <= {0, 128}
    assert stylebox_context.progress_reports[-1][:2] == (1, 1)
