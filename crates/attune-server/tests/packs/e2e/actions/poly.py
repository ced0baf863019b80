"""Python: reads JSON parameters from stdin."""
import json
import sys

params = json.load(sys.stdin)
print(json.dumps({"language": "python", "greeting": f"Hello, {params['name']}", "version": sys.version.split()[0]}))
