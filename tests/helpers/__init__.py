"""The tests' support package, one copy of each piece: `running` (a child process with its output collected),
`ports`, `procfs` (what /proc shows of processes), `tokens`, `waiting`; `support` for the kinds' tests. tests/servers.py
(the loopback servers and mitmdump) and tests/processes.py are built on it and keep their names for the tests.
The programs beside it (credential.py, hang.sh, …) are run by the tests as providers' commands."""
