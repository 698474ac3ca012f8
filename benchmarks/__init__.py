"""Speed and memory benchmarks of a2d against fairseq and the hardware: `python -m benchmarks` (or `make bench`).

Each measures and prints; none is a test. Timings depend on the machine and on what else runs on it.
"""
