"""Controller zone: the research loop, the judge, the records, and the CLI (`python -m harness`)."""
