"""`faregate bench`: each benchmark prints one JSON object with its same-run baseline beside it."""
