"""What of the slot is free: the slot less what the running tasks claimed.

The pilot asks the matchmaker with what is free, and claims a task's requested CPUs, memory,
disk and GPUs when it starts it, so tasks are packed side by side without ever being promised
more than the slot has. GPUs are claimed as devices, not as a count: a task gets exactly the
devices it claimed (its CUDA_VISIBLE_DEVICES), and no two tasks share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from floe.config.protocol import MAX_CPUS, MAX_GPUS
from floe.config.resources import Requirements, Slot, describe_gpu_kind, format_size, gpu_fits
from floe.pilot.gpus import Gpu, kind_of
from floe.pilot.slot import MeasuredSlot


class ClaimError(ValueError):
    """A task that does not fit what is free (the matchmaker gave more than was offered)."""


@dataclass(frozen=True)
class Claim:
    """What one running task holds of the slot."""

    cpus: int
    memory: int
    disk: int
    gpus: tuple[Gpu, ...] = ()

    def holds(self, requirements: Requirements) -> bool:
        """Whether a task with these requirements fits in what this claim holds."""
        return (requirements.cpus <= self.cpus and requirements.memory <= self.memory
                and requirements.disk <= self.disk
                and requirements.gpus <= len(fitting_gpus(requirements, self.gpus)))


def fitting_gpus(requirements: Requirements, gpus: Sequence[Gpu]) -> list[Gpu]:
    """Those of `gpus` that are of the kind the task asks for (all, when it names none), the
    least of them first, so that a larger GPU stays free for a task that needs one."""
    if not requirements.gpu_kind:
        return list(gpus)
    return sorted((gpu for gpu in gpus if gpu_fits(requirements, kind_of(gpu))),
                  key=lambda gpu: (gpu.memory, gpu.compute_capability or (0, 0)))


class Claims:
    """The slot's resources and the claims on them (used from one thread)."""

    def __init__(self, slot: MeasuredSlot) -> None:
        self.slot = slot
        self._held: list[Claim] = []

    @property
    def busy(self) -> bool:
        return bool(self._held)

    def free_gpus(self, held: Sequence[Claim] | None = None) -> list[Gpu]:
        taken = {gpu.uuid for claim in self._of(held) for gpu in claim.gpus}
        return [gpu for gpu in self.slot.gpus if gpu.uuid not in taken]

    def free(self, held: Sequence[Claim] | None = None) -> Claim:
        """Everything not claimed (or, given `held`, not claimed by those), as one claim-sized
        amount."""
        claims = self._of(held)
        return Claim(
            cpus=self.slot.cpus - sum(claim.cpus for claim in claims),
            memory=self.slot.memory - sum(claim.memory for claim in claims),
            disk=self.slot.disk - sum(claim.disk for claim in claims),
            gpus=tuple(self.free_gpus(claims)),
        )

    def offer(self, now: float | None = None, held: Sequence[Claim] | None = None) -> Slot:
        """What to ask the matchmaker for now (or once every claim but `held` is released)."""
        free = self.free(held)
        # A larger node offers as much as one ask may carry.
        return self.slot.offer(cpus=min(free.cpus, MAX_CPUS), memory=max(0, free.memory),
                               disk=max(0, free.disk), gpus=free.gpus[:MAX_GPUS], now=now)

    def can_offer(self, held: Sequence[Claim] | None = None) -> bool:
        """Whether anything could still fit: a CPU, some memory and some disk are free (or
        would be, with only `held` claimed)."""
        free = self.free(held)
        return free.cpus >= 1 and free.memory > 0 and free.disk > 0

    def fits_slot(self, requirements: Requirements) -> bool:
        """Whether a task with these requirements fits the slot once nothing else runs."""
        return Claim(self.slot.cpus, self.slot.memory, self.slot.disk,
                     self.slot.gpus).holds(requirements)

    def claim(self, requirements: Requirements) -> Claim:
        """Hold what a task requested (its GPUs chosen among the free ones)."""
        free = self.free()
        short = []
        if requirements.cpus > free.cpus:
            short.append(f"{requirements.cpus} CPUs ({free.cpus} free)")
        if requirements.memory > free.memory:
            short.append(f"{format_size(requirements.memory)} memory "
                         f"({format_size(max(0, free.memory))} free)")
        if requirements.disk > free.disk:
            short.append(f"{format_size(requirements.disk)} disk "
                         f"({format_size(max(0, free.disk))} free)")
        gpus = fitting_gpus(requirements, free.gpus)
        if requirements.gpus > len(gpus):
            kind = f" with {describe_gpu_kind(requirements)}" if requirements.gpu_kind else ""
            short.append(f"{requirements.gpus} GPUs{kind} ({len(gpus)} free)")
        if short:
            raise ClaimError("the task needs more than the pilot has free: " + ", ".join(short))
        claim = Claim(requirements.cpus, requirements.memory, requirements.disk,
                      tuple(gpus[:requirements.gpus]))
        self._held.append(claim)
        return claim

    def release(self, claim: Claim) -> None:
        self._held.remove(claim)

    def _of(self, held: Sequence[Claim] | None) -> Sequence[Claim]:
        return self._held if held is None else held
