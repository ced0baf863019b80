"""Reads JSON parameters from stdin and prints word statistics as JSON."""
import json
import sys

params = json.load(sys.stdin)
words = params["text"].split()
print(json.dumps({
    "words": len(words),
    "longest": max(words, key=len) if words else None,
    "python": sys.version.split()[0],
    "token_received": bool(params.get("api_token")),
}))
