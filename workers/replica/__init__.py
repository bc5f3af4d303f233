"""The dual-write replica: the best-effort writer beside the primary path, and the catch-up
from landing that proves equality."""
