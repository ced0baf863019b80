#!/bin/sh
# Stdin delivery: echoes what arrived on stdin.
cat
