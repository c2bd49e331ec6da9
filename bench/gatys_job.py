"""What a gatys job's outputs cost on top of its compute, measured side by side.

Two runs of the same job (one photo, one painting, the same params and steps):

* **bare**: the plugin alone, with no snapshots and no checkpoints, its result dropped: the
  compute a job cannot do without;
* **job**: the same job as the daemon runs it, through the runner, with the default
  outputs: a snapshot every 25 steps, checkpoints (the plugin's defaults), the result,
  the GIF and the manifest, written durably into an outbox.

It prints each wall time, in the job the time its optimiser ran and the time spent
writing after it, and the ratio job / bare (issue 13 asks for at most 1.5 at 512 px).

    python bench/gatys_job.py [--size 256] [--steps 100] [--rounds 2] [--photo PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stylebox.daemon.outbox import Outbox
from stylebox.daemon.runner import Job, PluginHandle, Runner
from stylebox.images import decode_image
from stylebox.plugins.api import Runtime
from stylebox.plugins.gatys import GatysParams, GatysPlugin
from stylebox.testing import RecordingContext

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    photo = REPO.parent / "shared/data/content/kodim06.png"
    if not photo.is_file():  # a clone without the Kodak set beside it: the shipped sample
        photo = REPO / "examples/photos/kodim05.png"
    parser.add_argument("--photo", type=Path, default=photo)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="gatys-job-"))
    runtime = Runtime(device=args.device, state_dir=state)
    common = {"style": ["starry_night"], "size": args.size, "steps": args.steps}
    job_params = GatysParams.model_validate(common)
    bare_params = GatysParams.model_validate(
        {**common, "snapshot_every": 0, "checkpoint_every": 0, "checkpoint_seconds": 0}
        if "checkpoint_seconds" in GatysParams.model_fields
        else {**common, "snapshot_every": 0, "checkpoint_every": 0}
    )
    bare_plugin = GatysPlugin(bare_params, runtime)
    job_plugin = GatysPlugin(job_params, runtime)
    image = decode_image(args.photo).rgb
    print(
        f"gatys job at {args.size} px, {args.steps} steps, on {bare_plugin.device} "
        f"({torch.get_num_threads()} threads); job params: snapshot_every="
        f"{job_params.snapshot_every}, checkpoint_every={job_params.checkpoint_every}"
        + (
            f", checkpoint_seconds={job_params.checkpoint_seconds}"
            if "checkpoint_seconds" in GatysParams.model_fields
            else ""
        )
    )
    bare_plugin.process(image, RecordingContext(state / "warm"))  # caches, allocator

    bare, job, process, after = [], [], [], []
    for round_ in range(args.rounds):
        began = time.perf_counter()
        bare_plugin.process(image, RecordingContext(state / f"bare{round_}"))
        bare.append(time.perf_counter() - began)

        out = state / f"out{round_}"
        handle = PluginHandle("gatys", "bench", job_plugin, job_params)
        began = time.perf_counter()
        result = Runner().execute(
            Job(args.photo, state / f"work{round_}", stem="photo"), handle, Outbox(out)
        )
        job.append(time.perf_counter() - began)
        timings = result.manifest["timings"]
        process.append(timings["process_seconds"])
        after.append(timings["encode_seconds"])
        print(
            f"  round {round_ + 1}: bare {bare[-1]:.2f} s, job {job[-1]:.2f} s "
            f"(optimiser {process[-1]:.2f} s, then writing {after[-1]:.2f} s)"
        )
        shutil.rmtree(out)
    median = statistics.median
    print(
        f"median: bare {median(bare):.2f} s, job {median(job):.2f} s, job / bare = "
        f"{median(job) / median(bare):.3f}; the optimiser in the job / bare = "
        f"{median(process) / median(bare):.3f}; writing after it {median(after):.2f} s"
    )
    shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
