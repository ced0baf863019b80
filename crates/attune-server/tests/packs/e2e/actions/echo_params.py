"""Stdin JSON delivery in Python: echoes the parameters with the interpreter's version."""
import json
import sys

params = json.load(sys.stdin)
params["python"] = sys.version_info[0]
print(json.dumps(params))
