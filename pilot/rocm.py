"""A node's AMD GPUs, as `rocm-smi` lists them, where NVML finds no NVIDIA GPU.

`rocm-smi --showuniqueid --showproductname --showmeminfo vram --json` prints one object per card
("card0", ...) with its unique id, product name and VRAM; each becomes a `Gpu` of vendor "amd"
whose UUID is written as ROCR_VISIBLE_DEVICES takes it ("GPU-" and the id's hex digits). Nothing
is measured on these devices (their memory in use reads as none): the pilot's own share of them
comes from the batch system's ROCR_VISIBLE_DEVICES or HIP_VISIBLE_DEVICES, as with NVML's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

from floe.pilot.gpus import Gpu, ListedSource

COMMAND = ["rocm-smi", "--showuniqueid", "--showproductname", "--showmeminfo", "vram", "--json"]
TIMEOUT = 20.0


def parse_rocm_smi(text: str) -> list[Gpu]:
    """The cards of rocm-smi's JSON, in card order; ValueError when it is not that JSON."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("rocm-smi printed no object of cards")
    cards = sorted(((int(m.group(1)), card) for name, card in data.items()
                    if (m := re.fullmatch(r"card(\d+)", name)) and isinstance(card, dict)),
                   key=lambda item: item[0])
    devices = []
    for index, card in cards:
        unique = str(_field(card, "unique id") or "").lower().removeprefix("0x")
        if not re.fullmatch(r"[0-9a-f]+", unique):
            raise ValueError(f"rocm-smi gave card{index} no unique id")
        memory = _field(card, "vram total memory")
        name = _field(card, "card series") or _field(card, "card model") or "AMD GPU"
        devices.append(Gpu(index, f"GPU-{unique}", str(name),
                           int(memory) if str(memory or "").isdigit() else 0, vendor="amd"))
    return devices


def open_rocm() -> tuple[ListedSource | None, str]:
    """The AMD GPUs rocm-smi lists, or None and why there are none."""
    if shutil.which(COMMAND[0]) is None:
        return None, "no rocm-smi on the PATH"
    try:
        done = subprocess.run(COMMAND, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
        devices = parse_rocm_smi(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as err:
        return None, f"rocm-smi cannot list the GPUs: {err}"
    return ListedSource(devices), f"rocm-smi: {len(devices)} AMD GPUs"


def _field(card: dict[str, Any], words: str) -> Any:
    """The value of the card's field whose name starts with `words` (case aside): rocm-smi's
    names vary between releases ("Unique ID", "VRAM Total Memory (B)")."""
    for name, value in card.items():
        if name.lower().startswith(words):
            return value
    return None
