avg((label_snapshot->>{key})::float8)
