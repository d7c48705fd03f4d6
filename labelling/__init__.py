"""The labelling loop, not in the ReFineG paper: which samples to label next, and the annotator's files.

suggest.py: the tagger's doubt over an unlabelled pool, spread over different sentences; labelstudio.py:
those samples as a Label Studio project, and its JSON export read back as a dataset (`EXPORT`, the reader
the application passes to formats.read_dataset). app/suggestion.py runs it inside a run (--suggest N).
A reader of the method may skip it.
"""
