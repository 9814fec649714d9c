#!/bin/sh
# Commands that leave daemons behind, as `setsid` and a double fork do: each daemon has a session and process group
# of its own and writes its pid to $2 (a line per run) before the command goes on. The run must end when the command
# does (or at its timeout, or when stopped), the daemons with it.
#   held    the daemon holds stdout open; the command prints headers and exits
#   closed  the daemon's output goes to /dev/null (a well-behaved daemon); the command prints headers and exits
#   double  a subshell starts the daemon and exits at once (a double fork); the command prints headers and exits
#   hang    the command starts a daemon, appends its own pid to $2 as well, then hangs
mode=$1 pids=$2
lines() { if [ -e "$pids" ]; then wc -l < "$pids"; else echo 0; fi; }
before=$(lines)
case $mode in
held) setsid sh -c 'echo $$ >> "$1"; exec sleep 300' daemon "$pids" & ;;
closed) setsid sh -c 'echo $$ >> "$1"; exec sleep 300' daemon "$pids" > /dev/null 2>&1 & ;;
double) (setsid sh -c 'sleep 300 & echo $! >> "$1"' daemon "$pids" > /dev/null 2>&1 &) ;;
hang) setsid sh -c 'echo $$ >> "$1"; exec sleep 300' daemon "$pids" & ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
while [ "$(lines)" -le "$before" ]; do sleep 0.01; done  # the daemon has written its pid
if [ "$mode" = hang ]; then
    echo $$ >> "$pids"
    exec sleep 300
fi
echo '{"X-Daemon": "'"$mode"'"}'
