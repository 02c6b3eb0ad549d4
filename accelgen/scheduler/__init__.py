"""QuantizedGraph + device + target -> HardwarePlan: folding, placement, FIFOs, models."""

from accelgen.scheduler.plan import HardwarePlan, Resources, StagePlan
from accelgen.scheduler.schedule import DoesNotFit, plan

__all__ = ["DoesNotFit", "HardwarePlan", "Resources", "StagePlan", "plan"]
