#!/bin/sh
# Starts a child, appends "<own pid> <child pid>" to $1 (a line per run), then hangs: the provider's timeout (or its
# stop) must kill both.
sleep 300 &
echo "$$ $!" >> "$1"
wait
