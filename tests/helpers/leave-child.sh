#!/bin/sh
# Prints a token and exits, leaving a child that holds stdout open and writes its pid to $1: the run must end when
# this script does, and the child with it.
sleep 300 &
echo "$!" > "$1.tmp"
mv "$1.tmp" "$1"
echo tok-left-child
