"""The parts of scripts/bench.py, a module each: `inprocess` (the hooks timed in this process: 1, 1a, 1c, 1d, 5),
`instructions` (1b, under valgrind), `end_to_end` (2-4 through a real mitmdump), `scale` (6: threads, memory and a
reload with thousands of entries), `sigv4` (7: signing against moto's server); `common` and `loadgen` under them."""
