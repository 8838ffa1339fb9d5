"""The pilot: it measures the slot it landed in and runs tasks there under limits.

It ships to worker nodes as one file, pilot.pyz (see `pilot.bundle`), and runs there on any
python3 from 3.9 with the standard library only; psutil and pynvml are used when importable.
It imports nothing of floe but `config`.
"""
