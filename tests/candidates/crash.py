"""A candidate with a bug: it raises before exporting anything."""

print("about to fail")
raise RuntimeError("candidate bug")
