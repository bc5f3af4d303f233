"""The faces: the `python -m workers` CLI, the main job (`workers up`) and its report. Both call
the one shared layer in `workers.app.context` and print the results' own summaries."""
