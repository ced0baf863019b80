#!/bin/sh
# Env delivery: prints the delivered parameters and the context as JSON.
printf '{"name": "%s", "count": "%s", "token_in_env": "%s", "execution_id": "%s", "action_ref": "%s", "pack_dir": "%s"}\n' \
  "$ATTUNE_ACTION_NAME" "$ATTUNE_ACTION_COUNT" "${ATTUNE_ACTION_TOKEN:-}" \
  "$ATTUNE_EXECUTION_ID" "$ATTUNE_ACTION_REF" "$ATTUNE_PACK_DIR"
