"""Reliability figures R1-R5 against real server processes (`python -m bench.reliability`): fuzz.py (radix cache +
allocator), soak.py, bad_input.py (schemathesis + malformed bodies), faults.py (kill -9, SIGTERM), auth_check.py;
server_proc.py starts the servers, workload.py builds the log-stream requests, report.py renders a run."""
