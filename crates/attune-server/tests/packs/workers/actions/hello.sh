#!/bin/sh
echo "hello ${ATTUNE_ACTION_ITEM} from $(hostname) as $(id -u) in $(pwd)"
