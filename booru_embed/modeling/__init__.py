"""The remote code: a flat folder copied next to the weights, so files import each other as `from .x import y`."""
