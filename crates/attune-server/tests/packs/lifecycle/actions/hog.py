"""Allocates far more memory than its container may use, touching every page."""
import sys

chunks = []
for megabyte in range(1024):
    chunks.append(bytearray(1024 * 1024))
    if megabyte % 64 == 0:
        print(f"allocated {megabyte} MiB", flush=True)
print("allocated 1 GiB without being stopped", file=sys.stderr)
