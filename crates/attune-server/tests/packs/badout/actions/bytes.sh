#!/bin/sh
# NUL, terminal escapes, invalid UTF-8 (0xff 0xfe) and a long line without a newline.
printf 'a\000b \033[31mred\033[0m \377\376 '
head -c 100000 /dev/zero | tr '\0' 'L'
printf 'err\000\200\n' >&2
