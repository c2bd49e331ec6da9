"""What Ray's scheduling costs per photo: a trivial plugin through ``stylebox batch`` locally
and through ``stylebox batch --ray``, with 1 and 2 workers (actors), side by side.

Each setting runs the real ``run_batch`` twice, over a small and a large folder of 32x32
images (``posterize``, which does next to nothing), on a fresh journal each time; the
difference between the two runs' times over the difference in files is the time per photo
once running, without the fixed costs (loading the plugin, starting actors, joining Ray);
the median of ``--repeat`` such pairs is shown, after a warm-up run of each engine.
The Ray runs join one local Ray instance (2 CPUs) started here, as a cluster is joined.

    python bench/ray_batch.py [--small 20] [--large 220] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from stylebox.daemon.batch import run_batch

HEAD = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
         object_store_memory=80 * 1024 * 1024)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""

CONFIG = """
state_dir = "state-{tag}"
[daemon]
batch_size = 1
[[batch]]
name = "b"
source = "{library}"
outbox = "out-{tag}"
plugin = "posterize"
params = {{ bits = 3 }}
workers = {workers}
"""


def library(folder: Path, count: int) -> Path:
    path = folder / f"library-{count}"
    path.mkdir()
    for i in range(count):
        Image.new("RGB", (32, 32), (i % 256, (7 * i) % 256, 90)).save(path / f"p{i:05d}.png")
    return path


def timed(folder: Path, source: Path, workers: int, ray: str | None, run: int) -> float:
    tag = f"{source.name}-{workers}-{'ray' if ray else 'local'}-{run}"
    config = folder / f"{tag}.toml"
    config.write_text(CONFIG.format(tag=tag, library=source, workers=workers))
    began = time.perf_counter()
    assert run_batch(config, "b", ray=ray) == 0
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--large", type=int, default=220)
    parser.add_argument("--repeat", type=int, default=3, help="runs per setting; the median")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the per-job log lines are not what is measured
    os.environ["RAY_AUTH_MODE"] = "token"  # the joining driver, like the instance below
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert head.stdout is not None and head.stdin is not None
    address = head.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            small, large = library(folder, args.small), library(folder, args.large)
            extra = args.large - args.small
            timed(folder, small, 1, None, -1)  # warm-up: first imports, first files
            timed(folder, small, 1, address, -1)
            rows = []
            for workers in (1, 2):
                per_photo = {}
                for engine, ray in (("local", None), ("ray", address)):
                    runs = []
                    for run in range(args.repeat):
                        t_small = timed(folder, small, workers, ray, run)
                        t_large = timed(folder, large, workers, ray, run)
                        runs.append(((t_large - t_small) / extra, t_small, t_large))
                    per, t_small, t_large = statistics.median(runs)
                    per_photo[engine] = per
                    rows.append((engine, workers, t_small, t_large, per))
                local, on_ray = per_photo["local"], per_photo["ray"]
                rows.append(("ray/local", workers, None, None, on_ray - local, local / on_ray))
    finally:
        head.stdin.close()
        head.wait(timeout=60)
    print(f"posterize 32x32, {args.small} and {args.large} files; per photo once running")
    head_line = ("engine", "workers", "small s", "large s", "ms/photo", "photos/s")
    print("{:<10}{:>8}{:>9}{:>9}{:>10}{:>10}".format(*head_line))
    for row in rows:
        engine, workers = row[0], row[1]
        if engine == "ray/local":
            print(
                f"{engine:<10}{workers:>8}{'':>9}{'':>9}{row[4] * 1000:>+10.1f}"
                f"{'':>10}  Ray's cost per photo; throughput ratio {row[5]:.2f}x"
            )
            continue
        _, _, t_small, t_large, per = row
        print(
            f"{engine:<10}{workers:>8}{t_small:>9.2f}{t_large:>9.2f}{per * 1000:>10.1f}"
            f"{1 / per:>10.1f}"
        )


if __name__ == "__main__":
    main()
