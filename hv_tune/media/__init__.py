"""The media layer: what a file contains, decided once for curation and the cache.

- ``probe``: a video's display size (after its display-matrix rotation), frame timestamps,
  variable-rate flag and codec (``probe_video``).
- ``video``: frames by index or by time, upright, at a bounded size (``VideoFrames``).
- ``images``: pixels of a still image, upright (EXIF) and RGB whatever its mode (``read_image``).
- ``captions``: the text of a caption file, whatever its encoding (``read_caption_file``), and the
  one caption rule of curation and the cache (``apply_caption_rule``).
- ``writer``: an H.264 clip that keeps its source's timestamps (``write_h264``).

Every failure raises ``MediaError`` with a short reason (docs/architecture.md, "Media layer").
"""

from hv_tune.media.captions import (
    apply_caption_rule,
    caption_edit_counts,
    decode_caption_bytes,
    find_caption_file,
    read_caption_file,
    replace_placeholder,
)
from hv_tune.media.errors import MediaError
from hv_tune.media.images import image_size, image_to_rgb, read_image, resize_to
from hv_tune.media.probe import VideoProbe
from hv_tune.media.video import VideoFrames, probe_video, scaled_size
from hv_tune.media.writer import write_h264

__all__ = [
    "MediaError", "VideoProbe", "VideoFrames", "apply_caption_rule", "caption_edit_counts", "decode_caption_bytes",
    "find_caption_file", "replace_placeholder", "image_size", "image_to_rgb",
    "probe_video", "read_caption_file", "read_image", "resize_to", "scaled_size", "write_h264",
]
