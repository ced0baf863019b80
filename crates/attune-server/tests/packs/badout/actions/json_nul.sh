#!/bin/sh
# JSON whose strings hold \u0000 (jsonb refuses it) and an escape character.
printf '{"text": "a\\u0000b", "list": ["\\u001b[0m", "\\u0000"]}\n'
