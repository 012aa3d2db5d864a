"""The bottom layer: errors, atomic file I/O, the artifact manifest, the runner contract, limits, metrics.

Nothing here imports torch, onnx or any runtime: every other layer (model,
runtimes, export, harness, CLI) builds on it, and a torch-free install runs it.
"""
