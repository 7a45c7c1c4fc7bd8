"""The memory side: the plan made before loading, the guard that watches pressure, swap, measurement."""
