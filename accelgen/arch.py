"""Which hardware template runs a model on a device: ``--arch pipeline|array|auto``.

* ``pipeline``: the streaming pipeline (`accelgen.scheduler.plan`); `DoesNotFit` when it does
  not fit.
* ``array``: the PE array (`accelgen.array.targets.estimate_array`); `NotOnArray` or
  `DoesNotFitArray` when it cannot run the model.
* ``auto``: both are planned; the faster one that fits is chosen (the pipeline on a tie), and
  `ArchChoice.why` says which and why. Neither fitting is a `DoesNotFit`: the pipeline's
  per-layer table, and a message naming both causes.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelgen.errors import UsageError

ARCHES = ("pipeline", "array", "auto")


@dataclass(frozen=True)
class ArchChoice:
    """The template chosen, its plan (`HardwarePlan` or `ArrayEstimate`) and why."""

    arch: str
    plan: object
    why: str


def choose_arch(arch: str, qg, dev, *, fps: float | None = None,
                clock_mhz: float | None = None, array_clock_mhz: float | None = None
                ) -> ArchChoice:
    """The template for `qg` on `dev` (module docstring). `clock_mhz` is the pipeline's clock
    (default: the device's planned one), `array_clock_mhz` the array's (default: its target's;
    `clock_mhz` when that is given)."""
    from accelgen.array.targets import DoesNotFitArray, NotOnArray, estimate_array
    from accelgen.scheduler import DoesNotFit, plan

    if arch not in ARCHES:
        raise UsageError(f"--arch {arch!r}: choose one of {', '.join(ARCHES)}")
    if arch == "pipeline":
        return ArchChoice("pipeline", plan(qg, dev, fps=fps, clock_mhz=clock_mhz),
                          "--arch pipeline")
    if arch == "array":
        return ArchChoice("array", estimate_array(qg, dev, array_clock_mhz or clock_mhz),
                          "--arch array")
    try:
        est = estimate_array(qg, dev, array_clock_mhz or clock_mhz)
        array_error = ""
    except (NotOnArray, DoesNotFitArray) as err:
        est, array_error = None, str(err)
    try:
        p = plan(qg, dev, fps=fps, clock_mhz=clock_mhz)
        unfit = None
    except DoesNotFit as err:
        p, unfit = None, err
    if p is None and est is None:
        # (the pipeline's per-layer table, with both templates' reasons)
        raise DoesNotFit(f"{qg.name} fits neither template on {dev.name}: the pipeline: "
                         f"{unfit}; the PE array: {array_error}", unfit.table, unfit.budget,
                         unfit.suggestions) from None
    pipeline_error = str(unfit) if unfit is not None else ""
    if p is not None and (est is None or p.fps >= est.fps):
        why = (f"the streaming pipeline: {p.fps:,.0f} FPS against the PE array's "
               f"{est.fps:,.1f}" if est is not None else
               f"the streaming pipeline (the PE array cannot run it: {array_error})")
        return ArchChoice("pipeline", p, why)
    why = (f"the PE array: {est.fps:,.1f} FPS against the pipeline's {p.fps:,.0f}"
           if p is not None else
           f"the PE array (the streaming pipeline does not fit: {pipeline_error})")
    return ArchChoice("array", est, why)


__all__ = ["ARCHES", "ArchChoice", "choose_arch"]
