"""A video clip from still frames, for the video-prediction benchmark (docs/deploy.md, issue #17).

    python scripts/make_clip.py ../shared/data/camvid/train clip150.mp4 --frames 150 --fps 30

The first ``--frames`` images of the folder (sorted by name) as H.264 at their own size (yuv420p, crf 18).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--fps", type=int, default=30)
    a = ap.parse_args(argv)
    import av

    from rtseg.data.io import read_image

    files = sorted(p for p in a.folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[: a.frames]
    if len(files) < a.frames:
        sys.exit(f"{a.folder}: {len(files)} images, fewer than --frames {a.frames}")
    first = read_image(files[0])
    tmp = a.out.with_name(a.out.name + ".part.mp4")
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=a.fps, options={"crf": "18"})
        s.height, s.width, s.pix_fmt = first.shape[0], first.shape[1], "yuv420p"
        for f in files:
            for p in s.encode(av.VideoFrame.from_ndarray(read_image(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.replace(a.out)
    print(f"{a.out}: {len(files)} frames {first.shape[1]}x{first.shape[0]} at {a.fps} FPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
