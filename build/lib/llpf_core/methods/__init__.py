"""Path methods beside LLPF: ``linear``, ``bezier`` and ``rebasin``, one module each.

Each method turns the endpoints into a list of states along a path; ``common.run_method`` evaluates
them and writes the run folder in the one path format (points/, path.csv, baseline.csv, run.json).
"""
