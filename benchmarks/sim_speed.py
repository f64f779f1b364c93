"""SimCXR export speed: ``python benchmarks/sim_speed.py --images 1000 --size 512 --workers 2``.

Runs the real export (render + 16-bit PNGs + pairs + masks + records) into a temporary
directory, half normal and half nodule images, and prints wall time, images/s and the time
1,000 images would take (the issue's target: under 5 minutes on 2 cores). Writes the numbers to
``benchmarks/results/sim_speed_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    from cxr_nodule_aug import __version__
    from cxr_nodule_aug.sim.export import export

    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export(Path(tmp) / "out", normal=args.images // 2, nodule=args.images - args.images // 2, seed=args.seed,
               size=args.size, workers=args.workers, progress=True, on_image=lambda i: times.append(time.perf_counter()))
        total = time.perf_counter() - t0
    first = times[0] - t0  # process start-up + loading/preparing the CT in each worker
    steady = (times[-1] - times[0]) / max(len(times) - 1, 1)
    result = {
        "images": args.images, "size": args.size, "workers": args.workers, "wall_s": round(total, 2),
        "startup_s": round(first, 2), "steady_s_per_image": round(steady, 4),
        "images_per_s": round(args.images / total, 3),
        "projected_1000_images_s": round(first + 999 * steady, 1),
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "library_version": __version__,
    }
    print(json.dumps(result, indent=1))
    target = "OK" if result["projected_1000_images_s"] < 300 else "OVER"
    print(f"1000 images at {args.size}px with {args.workers} workers: {result['projected_1000_images_s']:.0f} s "
          f"(target 300 s: {target})")
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sim_speed_{args.size}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
