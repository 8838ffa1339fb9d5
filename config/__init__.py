"""The declarative core of floe, shared by every other part.

It holds the dataset-config schema and its validation, the expression language, the resource
vocabulary (`fits()`), the state-transition tables, and the settings files with their
documentation. It imports nothing else of the project and runs on Python 3.9, because the pilot
carries it to worker nodes inside `pilot.pyz`.
"""
