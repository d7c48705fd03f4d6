"""The application around the method: what `python refineg.py` adds to the stages of refineg.pipeline.

cli.py: the flags (one Settings object, a part per stage); run.py: `python refineg.py`, which reads the
inputs, calls refineg.pipeline and writes and prints each stage's result as it ends; inputs.py: reading and
checking every dataset flag; rundir.py: the run directory, each stage's time, client, counts and files, and
resume; counts.py: the run's counts, summed from each stage's traces; store.py: the trained tagger a run
keeps (OUT/tagger, reused by --tagger); report.py: the summary, the lines the stages' results print, and the
--viz pictures; page.py: trace.jsonl and report.html; suggestion.py: the --suggest stage, written into the run
(the labelling loop itself is in labelling/); score.py: the scorer's command line (`python -m app.score`,
eval.evaluate on files). A reader of the method may skip it.
"""
