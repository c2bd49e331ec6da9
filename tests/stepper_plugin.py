"""A small plugin that steps, snapshots and checkpoints like gatys, run through the real
Runner: in-process, or as a script (``python stepper_plugin.py ARGS_JSON``) to be killed."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import Field

from stylebox.daemon.outbox import Outbox
from stylebox.daemon.runner import Job, JobResult, PluginHandle, Runner
from stylebox.errors import Cancelled, PluginError
from stylebox.images import atomic_write_bytes
from stylebox.plugins.api import JobContext, Plugin, PluginParams, Runtime

STATE = "state.json"


class StepperParams(PluginParams):
    steps: int = 10
    checkpoint_every: int = 0
    snapshot_every: int = 0
    seconds_per_step: float = 0.0
    hold_at: int = Field(0, description="after this step (and its checkpoint), wait to be killed")
    marker: str = Field("", description="a file to create when it starts waiting")
    cancel_at: int = Field(0, description="ask the job to stop after this step")
    fail_at: int = Field(0, description="raise PluginError after this step")
    nan_at: int = Field(0, description="report a loss of NaN (and a fact of infinity) at this step")
    bare_at: int = Field(0, description="raise an Exception without a message after this step")
    grey: bool = Field(False, description="return a greyscale image (the contract asks RGB)")
    black: bool = Field(False, description="return all black, as a model whose output went NaN")
    odd_fact: bool = Field(False, description="note numpy values at the end, a NaN among them")
    text_metric: bool = Field(False, description="report the loss as text, not a number")
    past_total: bool = Field(False, description="report every step past the count")


class Stepper(Plugin[StepperParams]):
    name = "stepper"
    version = "1"
    Params = StepperParams

    def __init__(self, params: StepperParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        self.cancel = threading.Event()

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        p = self.params
        step = 0
        if p.checkpoint_every:
            state = job.checkpoint_dir / STATE
            step = json.loads(state.read_text())["step"] if state.is_file() else 0
        if step:
            job.note(resumed_from_step=step)
        elif p.snapshot_every:
            job.snapshot(image, 0)
        while step < p.steps:
            if job.cancelled:
                if p.checkpoint_every:
                    self._save(job, step)
                raise Cancelled(f"cancelled at step {step}")
            time.sleep(p.seconds_per_step)
            step += 1
            loss = math.nan if step == p.nan_at else 1000.0 / step
            reported = step + p.steps if p.past_total else step
            job.progress(reported, p.steps, loss="high" if p.text_metric else loss)  # type: ignore[arg-type]
            if p.snapshot_every and step % p.snapshot_every == 0:
                job.snapshot(image, step)
            if p.checkpoint_every and step % p.checkpoint_every == 0:
                self._save(job, step)
            if step == p.hold_at:
                Path(p.marker).touch()  # a test plugin: the test is waiting for this file
                time.sleep(600)
            if step == p.nan_at:
                job.note(spread=math.inf)
            if step == p.cancel_at:
                self.cancel.set()
            if step == p.bare_at:
                raise Exception()  # a plugin bug, as written in the wild
            if step == p.fail_at:
                raise PluginError(f"failed at step {step}")
        if p.odd_fact:
            job.note(scores=[0.5, np.float32("nan")])  # type: ignore[list-item]
            odd = {"steps": np.int64(2), "converged": np.bool_(True), "counts": np.arange(2)}
            job.note(**odd)  # type: ignore[arg-type]
        if p.black:
            return Image.new("RGB", image.size)
        return image.convert("L") if p.grey else image

    @staticmethod
    def _save(job: JobContext, step: int) -> None:
        atomic_write_bytes(job.checkpoint_dir / STATE, json.dumps({"step": step}).encode())


def run(image: Path, out: Path, work: Path, params: dict) -> JobResult:
    """One run of the job ``image`` -> ``out`` with the work folder ``work``."""
    stepper = Stepper(StepperParams(**params), Runtime(state_dir=work.parent))
    handle = PluginHandle("stepper", "1", stepper, stepper.params)
    # The names a journal gives the job when it is queued, and keeps across its runs.
    job = Job(image, work, stem=image.stem)
    return Runner().execute(job, handle, Outbox(out), stepper.cancel)


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    paths = [Path(arguments.pop(key)) for key in ("image", "out", "work")]
    run(*paths, arguments)
