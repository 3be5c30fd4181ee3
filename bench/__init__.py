"""Redline's benchmark suite: `make bench` (`python -m bench --help` for the flags).

Redline's edit endpoint against two peers with the same workload — a write-through endpoint that
UPDATEs the row per edit (naive) and a bare Redis SET (ceiling) — at a constant rate and at
maximum throughput, and the flusher's throughput on a backlog of dirty documents.
"""
