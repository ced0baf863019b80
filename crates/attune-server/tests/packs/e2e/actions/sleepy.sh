#!/bin/sh
echo "sleeping past the timeout"
sleep 60
echo "never printed"
