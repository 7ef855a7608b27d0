"""``darkknowledge bench``: our engine against an mdistiller-style reference loop, side by side."""
