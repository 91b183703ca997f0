"""The ``kvcore`` command: a thin face over loading (main, inspect, demo, rendering)."""
