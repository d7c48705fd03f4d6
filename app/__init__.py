"""The application around the method: what `python refineg.py` adds to the stages of refineg.pipeline.

cli.py: the flags (every stage's settings) and their checks; inputs.py: reading and checking every dataset
flag; rundir.py: the run directory, each stage's time, client, counts and files, and resume; report.py: the
summary and the --viz pictures; page.py: trace.jsonl and report.html; suggestion.py: the --suggest stage,
written into the run (the labelling loop itself is in labelling/); score.py: the scorer's command line
(`python -m app.score`, eval.evaluate on files). A reader of the method may skip it.
"""
