"""LLPF's parts beside its tick loop (connect.py): the schedule of stages and phases (schedule.py) and
the kinds of stage, each with its destination, variance handling and stop test (kinds.py)."""
